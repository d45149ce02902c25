// Awareness relay: states propagate both ways, a connection that drops without
// saying goodbye has its state removed by the server, a late joiner sees the
// current states, and a normal disconnect removes the state too.
//   usage: node awareness.mjs <serverUrl> <room>
import { init, step, connect, waitFor, waitSynced, run, assert, setDiagnostics } from './lib.mjs'

const { serverUrl, room } = init('awareness')

const states = (provider) => provider.awareness.getStates()
/** the state `viewer` holds for the client of `owner` (undefined if none) */
const stateOf = (viewer, owner) => states(viewer.provider).get(owner.doc.clientID)
const nameOf = (viewer, owner) => stateOf(viewer, owner)?.user?.name
const dump = (label, c) => `\n  ${label} (client ${c.doc.clientID}) sees ${JSON.stringify([...states(c.provider)])}`

run(async () => {
  step('connecting providers A and B')
  const A = connect(serverUrl, room)
  const B = connect(serverUrl, room)
  const seen = { A, B }
  setDiagnostics(() => Object.entries(seen).map(([k, c]) => dump(k, c)).join(''))
  await waitSynced(A.provider, B.provider)

  step('A sets {user:{name:"alice"}}; waiting for B to see it')
  A.provider.awareness.setLocalState({ user: { name: 'alice' } })
  await waitFor(() => nameOf(B, A) === 'alice', 'B sees alice')

  step('B sets {user:{name:"bob"}}; waiting for A to see it')
  B.provider.awareness.setLocalState({ user: { name: 'bob' } })
  await waitFor(() => nameOf(A, B) === 'bob', 'A sees bob')

  step('connecting provider C (carol); waiting for A to see it')
  const C = connect(serverUrl, room)
  seen.C = C
  await waitSynced(C.provider)
  C.provider.awareness.setLocalState({ user: { name: 'carol' } })
  await waitFor(() => nameOf(A, C) === 'carol', 'A sees carol')

  step("dropping C's socket abruptly (no awareness goodbye, no reconnect)")
  C.provider.shouldConnect = false // the provider's close handler must not reconnect
  C.provider.ws.terminate() // ws: destroy the TCP socket without a close frame
  step('waiting (<= 10 s) for A to see carol removed')
  await waitFor(() => !states(A.provider).has(C.doc.clientID), 'A sees carol removed', 10000)

  step('A updates its state; connecting late joiner D')
  A.provider.awareness.setLocalStateField('cursor', 42)
  await waitFor(() => stateOf(B, A)?.cursor === 42, 'B sees the updated alice')
  const D = connect(serverUrl, room)
  seen.D = D
  await waitSynced(D.provider)
  step("waiting for D to see alice's current state and bob")
  await waitFor(() => stateOf(D, A)?.cursor === 42 && nameOf(D, A) === 'alice' && nameOf(D, B) === 'bob',
    'D sees alice (cursor 42) and bob')
  assert(!states(D.provider).has(C.doc.clientID), 'late joiner D still sees dropped carol')

  step('destroying B normally; waiting for A and D to see bob removed')
  B.provider.destroy()
  await waitFor(() => !states(A.provider).has(B.doc.clientID) && !states(D.provider).has(B.doc.clientID),
    'A and D see bob removed', 10000)
})
