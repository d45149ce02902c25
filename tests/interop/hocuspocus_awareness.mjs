// Awareness with the stock Hocuspocus provider (separate sockets, document <room>):
//   1. A sets its state, then B joins and sets its state: each sees the other's (B sees A's
//      without A sending anything again: the server gives a joiner the current states).
//   2. A changes its state; B sees the change.
//   3. A is destroyed the stock way (it sends its state removal, then CLOSE): B sees A removed.
//   4. C joins and is seen by B, then C only detaches (sends CLOSE, no awareness removal):
//      the server removes C's state and B sees it go.
//   5. D joins and is seen by B, then D's TCP socket is destroyed abruptly (no goodbye):
//      the server removes D's state and B sees it go.
//   6. A late joiner E sees B and none of A, C, D.
//   usage: node hocuspocus_awareness.mjs <serverUrl> <room>
import { init, step, socket, connect, destroy, waitSynced, waitFor, assert, run } from './hocuspocus_lib.mjs'

const { serverUrl, room } = init('hocuspocus_awareness')

const stateOf = (observer, subject) => observer.provider.awareness.getStates().get(subject.doc.clientID)
const nameOf = (observer, subject) => stateOf(observer, subject)?.user?.name

run(async () => {
  step('A joins and sets its state')
  const A = connect(socket(serverUrl), room, { label: 'A' })
  A.provider.setAwarenessField('user', { name: 'alice', color: '#f00' })
  await waitSynced([A])

  step('B joins and sets its state; each must see the other')
  const B = connect(socket(serverUrl), room, { label: 'B' })
  B.provider.setAwarenessField('user', { name: 'bob', color: '#00f' })
  await waitSynced([B])
  await waitFor(() => nameOf(B, A) === 'alice', "B sees A's state (sent to the joiner)")
  await waitFor(() => nameOf(A, B) === 'bob', "A sees B's state")

  step('A changes its state; B must see the change')
  A.provider.setAwarenessField('cursor', { anchor: 3, head: 5 })
  await waitFor(() => stateOf(B, A)?.cursor?.head === 5, "B sees A's new cursor")

  step('A is destroyed; B must see its state removed')
  destroy(A)
  await waitFor(() => stateOf(B, A) === undefined, "A's state removed on B", 10000)

  step('C joins; B sees it; C detaches (CLOSE only): B must see its state removed')
  const C = connect(socket(serverUrl), room, { label: 'C' })
  C.provider.setAwarenessField('user', { name: 'carol' })
  await waitSynced([C])
  await waitFor(() => nameOf(B, C) === 'carol', "B sees C's state")
  C.provider.detach() // sends CLOSE for the document; the provider does not remove its own state
  await waitFor(() => stateOf(B, C) === undefined, "C's state removed on B after its CLOSE", 10000)

  step("D joins; B sees it; D's socket is destroyed abruptly: B must see its state removed")
  const wsD = socket(serverUrl)
  const D = connect(wsD, room, { label: 'D' })
  D.provider.setAwarenessField('user', { name: 'dave' })
  await waitSynced([D])
  await waitFor(() => nameOf(B, D) === 'dave', "B sees D's state")
  wsD.shouldConnect = false
  wsD.webSocket.terminate()
  await waitFor(() => stateOf(B, D) === undefined, "D's state removed on B after its socket died", 10000)

  step('late joiner E must see B and none of A, C, D')
  const E = connect(socket(serverUrl), room, { label: 'E' })
  await waitSynced([E])
  await waitFor(() => nameOf(E, B) === 'bob', "E sees B's state")
  for (const gone of [A, C, D]) {
    assert(stateOf(E, gone) === undefined, `E sees the state of ${gone.label}, which left`)
  }
})
