// Reconnection after a server restart with offline edits on both sides, driven by a parent
// over stdio (only these protocol lines go to stdout, logs go to stderr):
//   1. A and B (two sockets, document <room>) sync; A inserts 'before-restart ' and once it is
//      acknowledged (unsynced 0) and B has it, the script prints READY_FOR_RESTART.
//   2. The parent stops the server (gracefully or by killing it), starts a new one on the same
//      port and data dir, and writes RESTARTED (one line) on our stdin.
//   3. As soon as each provider sees its socket drop, it edits while offline (A appends
//      'offline-A ', B appends 'offline-B '), then reconnects on its own (the stock retry, with
//      short delays).
//   4. After RESTARTED both must be synced again, contain 'before-restart ' and both offline
//      edits, be identical, and have no unsynced change; a fresh C sees the same. Prints DONE.
//   usage: node hocuspocus_restart.mjs <serverUrl> <room>      (room must be new/empty)
import { createInterface } from 'node:readline'
import { init, step, log, socket, connect, waitSynced, waitAllSaved, waitFor, assert, run } from './hocuspocus_lib.mjs'

// Restarting a server (a build may be slow to start) needs more than the usual 30 s.
const { serverUrl, room } = init('hocuspocus_restart', [], Number(process.env.INTEROP_TIMEOUT_MS) || 45000)

let restarted = false
createInterface({ input: process.stdin }).on('line', (line) => {
  if (line.trim() === 'RESTARTED') restarted = true
})

// Retry quickly: the stock default starts at 1 s and doubles.
const retry = { delay: 100, minDelay: 100, maxDelay: 500, factor: 1.5, jitter: false }

run(async () => {
  step('connecting A and B')
  const A = connect(socket(serverUrl, retry), room, { label: 'A' })
  const B = connect(socket(serverUrl, retry), room, { label: 'B' })
  await waitSynced([A, B])
  assert(A.text() === '' && B.text() === '', 'the room must be fresh')

  step("A inserts 'before-restart '")
  A.doc.getText('text').insert(0, 'before-restart ')
  await waitAllSaved([A])
  await waitFor(() => B.text() === 'before-restart ', 'B has the pre-restart edit')

  const offline = {}
  for (const [c, edit] of [[A, 'offline-A '], [B, 'offline-B ']]) {
    c.ws.on('status', ({ status }) => {
      if (status === 'disconnected' && !offline[c.label]) {
        offline[c.label] = true
        const t = c.doc.getText('text')
        t.insert(t.length, edit)
        log(`${c.label} lost its socket; inserted ${JSON.stringify(edit)} while offline`)
      }
    })
  }

  step('READY_FOR_RESTART sent; waiting for both sockets to drop and RESTARTED on stdin')
  process.stdout.write('READY_FOR_RESTART\n')
  await waitFor(() => offline.A && offline.B, 'both providers disconnected and edited offline')
  await waitFor(() => restarted, 'RESTARTED on stdin')

  step('restarted; both must reconnect, resync and converge')
  await waitSynced([A, B], 2)
  const complete = (c) => c.text().startsWith('before-restart ') && c.text().includes('offline-A ') && c.text().includes('offline-B ')
  await waitFor(() => complete(A) && complete(B) && A.text() === B.text(), 'A and B have both offline edits')
  assert(A.text().length === 'before-restart offline-A offline-B '.length, `unexpected text ${JSON.stringify(A.text())}`)
  await waitAllSaved([A, B])
  assert(A.events.authenticated.length >= 2 && B.events.authenticated.length >= 2, 'both authenticated again after the restart')

  step('a fresh C must see the merged document from the restarted server')
  const C = connect(socket(serverUrl), room, { label: 'C' })
  await waitSynced([C])
  await waitFor(() => C.text() === A.text(), 'C has the merged text')
  process.stdout.write('DONE\n')
})
