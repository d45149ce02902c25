// Persistence across a server restart, driven by a parent process over stdio:
//   this script prints READY_FOR_RESTART on stdout, the parent stops the server,
//   starts a new one on the same port and data dir, then writes RESTARTED on our
//   stdin. This script prints DONE on stdout and exits 0 on success.
// Only those two protocol lines go to stdout; logs go to stderr.
//   usage: node restart.mjs <serverUrl> <room>     (room must be new/empty)
import { createInterface } from 'node:readline'
import { init, step, log, connect, waitFor, waitSynced, sleep, run, assert, setDiagnostics } from './lib.mjs'

const { serverUrl, room } = init('restart')

let restarted = false
createInterface({ input: process.stdin }).on('line', (line) => {
  if (line.trim() === 'RESTARTED') restarted = true
})

const text = (c) => c.doc.getText('text').toString()

run(async () => {
  step('connecting P1')
  const P1 = connect(serverUrl, room)
  const seen = { P1 }
  setDiagnostics(() => Object.entries(seen).map(([k, c]) => `\n  ${k} synced=${c.provider.synced} text=${JSON.stringify(text(c))}`).join(''))
  await waitSynced(P1.provider)
  assert(text(P1) === '', `room must be fresh, but its text is ${JSON.stringify(text(P1))}`)

  step("P1 synced; inserting 'before-restart '")
  P1.doc.getText('text').insert(0, 'before-restart ')
  await sleep(300)

  // On the disconnect caused by the server going down: keep P1 offline (so a fresh
  // client can first check what the new server loaded from disk) and edit offline.
  let disconnected = false
  P1.provider.on('status', ({ status }) => {
    if (status === 'disconnected' && !disconnected) {
      disconnected = true
      P1.provider.shouldConnect = false // the pending reconnect becomes a no-op
      const t = P1.doc.getText('text')
      t.insert(t.length, 'offline-edit ')
      log("server went away; P1 inserted 'offline-edit ' while offline")
    }
  })

  step('READY_FOR_RESTART sent; waiting for the server to go down and RESTARTED on stdin')
  process.stdout.write('READY_FOR_RESTART\n')
  await waitFor(() => disconnected && restarted, 'server down and RESTARTED received')

  step('restarted; fresh P2 must see the pre-restart edit loaded from disk')
  const P2 = connect(serverUrl, room)
  seen.P2 = P2
  await waitSynced(P2.provider)
  await waitFor(() => text(P2).includes('before-restart '), "P2 has 'before-restart '")
  assert(!text(P2).includes('offline-edit '), 'P2 saw the offline edit before P1 reconnected')

  step('reconnecting P1; waiting for it to be synced again')
  P1.provider.connect()
  await waitSynced(P1.provider)

  step('P1 resynced; fresh P3 must see both edits')
  const P3 = connect(serverUrl, room)
  seen.P3 = P3
  await waitSynced(P3.provider)
  await waitFor(() => text(P3) === 'before-restart offline-edit ', "P3 text is 'before-restart offline-edit '")
  await waitFor(() => text(P2) === text(P3), 'P2 received the offline edit live')
  process.stdout.write('DONE\n')
})
