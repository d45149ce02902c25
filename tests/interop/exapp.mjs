// Stock y-websocket providers in ExApp mode, as HaRP forwards them: each socket carries the
// AppAPI headers naming its Nextcloud user (HaRP adds them; here a WebSocket subclass does).
// A (file writer) and B (read-only share) sync; A's edit reaches B, B's is refused; C (no
// access) is refused before the upgrade and never syncs. Then READY: the parent revokes B in
// its stand-in Nextcloud and writes REVOKED; B must close with 4403 and not reconnect, while A
// stays connected. DONE.
//   usage: node exapp.mjs <serverUrl> <room> <appId> <appSecret>
// The server URL may be ws+unix:///path/to.sock:/ws (ws's unix-socket form).
import * as readline from 'node:readline'
import * as authProtocol from 'y-protocols/auth'
import WebSocket from 'ws'
import { init, log, step, connect, waitFor, waitSynced, run, setDiagnostics, sleep, assert } from './lib.mjs'

const { serverUrl, room } = init('exapp')
const [appId, appSecret] = process.argv.slice(4)
if (!appId || !appSecret) {
  console.error('usage: node exapp.mjs <serverUrl> <room> <appId> <appSecret>')
  process.exit(2)
}
const QUIET_MS = 2000
const lines = readline.createInterface({ input: process.stdin })
const nextLine = () => new Promise(resolve => lines.once('line', resolve))

/** A WebSocket class that sends AppAPI's headers for `user`, as HaRP does. */
const asUser = (user) => class extends WebSocket {
  constructor (url, protocols) {
    super(url, protocols, {
      headers: {
        'EX-APP-ID': appId,
        'EX-APP-VERSION': '0.1.0',
        'AA-VERSION': '32.0.0',
        'AUTHORIZATION-APP-API': Buffer.from(`${user}:${appSecret}`).toString('base64')
      }
    })
  }
}

/** Connection attempts, errors and the 'closed' event of a provider. */
const watch = (provider) => {
  const seen = { attempts: 0, errors: 0, closed: null }
  provider.on('status', ({ status }) => { if (status === 'connecting') seen.attempts++ })
  provider.on('connection-error', () => { seen.errors++ })
  provider.on('connection-close', (event) => { seen.closed = { code: event?.code, reason: event?.reason } })
  return seen
}

const text = (c) => c.doc.getText('text').toString()

run(async () => {
  step('connecting A (read-write) and B (read-only)')
  const A = connect(serverUrl, room, { WebSocketPolyfill: asUser('alice') })
  const B = connect(serverUrl, room, { WebSocketPolyfill: asUser('bob') })
  const aSeen = watch(A.provider)
  const bSeen = watch(B.provider)
  const denials = []
  B.provider.messageHandlers[2] = (_encoder, decoder, provider) => {
    authProtocol.readAuthMessage(decoder, provider.doc, (_doc, reason) => denials.push(reason))
  }
  setDiagnostics(() => `A ${JSON.stringify(text(A))} ${JSON.stringify(aSeen)} B ${JSON.stringify(text(B))} ${JSON.stringify(bSeen)}`)
  await waitSynced(A.provider, B.provider)

  step('A writes; B receives it')
  A.doc.getText('text').insert(0, 'from-alice ')
  await waitFor(() => text(B) === 'from-alice ', 'B sees from-alice')

  step('B writes; the server refuses it')
  B.doc.getText('text').insert(0, 'from-bob ')
  await waitFor(() => denials.length > 0, 'B receives a permission-denied Auth message')
  log(`denied: ${denials[0]}`)
  A.doc.getText('text').insert(text(A).length, 'more')
  await waitFor(() => text(B).endsWith('more'), 'B sees more')
  await sleep(200)
  assert(text(A) === 'from-alice more', `A has ${JSON.stringify(text(A))}`)

  step('C (no access to the file) is refused before the upgrade')
  const C = connect(serverUrl, room, { WebSocketPolyfill: asUser('carol') })
  const cSeen = watch(C.provider)
  await waitFor(() => cSeen.errors > 0 || cSeen.closed !== null, 'C refused')
  assert(!C.provider.synced, 'C synced a file it may not read')
  C.provider.destroy()
  assert(text(C) === '', `C received ${JSON.stringify(text(C))}`)

  console.log('READY')
  step('waiting for the parent to revoke B')
  const line = await nextLine()
  assert(line === 'REVOKED', `expected REVOKED, got ${line}`)
  await waitFor(() => bSeen.closed !== null, 'B closed')
  assert(bSeen.closed.code === 4403, `B closed with ${JSON.stringify(bSeen.closed)}`)
  const attempts = bSeen.attempts
  step(`checking that B does not reconnect for ${QUIET_MS} ms and A stays`)
  await sleep(QUIET_MS)
  assert(bSeen.attempts === attempts, `B tried to reconnect ${bSeen.attempts - attempts} times`)
  assert(A.provider.wsconnected, 'A was disconnected')
  A.doc.getText('text').insert(0, '!')
  console.log('DONE')
})
