// Stock providers stop at a deleted room: P connects, types, prints READY; the parent deletes
// the room. P must get close 4410 and a 'closed' event, and then make no further connection
// attempt; Q, a provider holding P's document, connects after the deletion, gets the same and
// stops. Each waits QUIET_MS after its 'closed' to see that nothing reconnects, then DONE.
//   usage: node deleted_room.mjs <serverUrl> <room>
// (stdin: the parent writes DELETED once the room is deleted.)
import * as readline from 'node:readline'
import { init, step, connect, waitFor, waitSynced, run, setDiagnostics, sleep, assert, Y } from './lib.mjs'

const { serverUrl, room } = init('deleted_room')
const QUIET_MS = 3000
const lines = readline.createInterface({ input: process.stdin })
const nextLine = () => new Promise(resolve => lines.once('line', resolve))

/** Counts a provider's connection attempts and remembers its 'closed' event. */
const watch = (provider) => {
  const seen = { attempts: 0, closed: null }
  provider.on('status', ({ status }) => { if (status === 'connecting') seen.attempts++ })
  provider.on('closed', (event) => { seen.closed = event })
  return seen
}

const expectStopped = async (name, seen) => {
  step(`waiting for ${name}'s closed event`)
  await waitFor(() => seen.closed !== null, `${name} closed`)
  assert(seen.closed.code === 4410, `${name} closed with ${seen.closed.code} ${seen.closed.reason}`)
  const attempts = seen.attempts
  step(`checking that ${name} does not reconnect for ${QUIET_MS} ms`)
  await sleep(QUIET_MS)
  assert(seen.attempts === attempts, `${name} tried to reconnect ${seen.attempts - attempts} times`)
}

run(async () => {
  step('connecting provider P')
  const P = connect(serverUrl, room)
  const pSeen = watch(P.provider)
  setDiagnostics(() => `P ${JSON.stringify(pSeen)}`)
  await waitSynced(P.provider)
  P.doc.getText('text').insert(0, 'doomed text')
  // The parent waits until the room holds the text before it deletes the room.
  console.log('READY')
  step('waiting for the parent to delete the room')
  const line = await nextLine()
  assert(line === 'DELETED', `expected DELETED, got ${line}`)
  await expectStopped('P', pSeen)
  assert(P.doc.getText('text').toString() === 'doomed text', 'P keeps its local copy')

  step('connecting provider Q with the deleted document')
  const Q = connect(serverUrl, room)
  // Before its socket opens: Q offers the whole document as soon as it is connected.
  Y.applyUpdate(Q.doc, Y.encodeStateAsUpdate(P.doc))
  const qSeen = watch(Q.provider)
  setDiagnostics(() => `P ${JSON.stringify(pSeen)} Q ${JSON.stringify(qSeen)}`)
  await expectStopped('Q', qSeen)
  console.log('DONE')
})
