// Roster and active-editor hand-over through ycord's stateless events (separate sockets,
// document <room>):
//   1. A joins: its roster names it ("you"), lists it in "users" (1 connection, mode rw) and
//      names it the editor.
//   2. B joins: A gets {"ycord":"joined"} for B; B's roster lists both users, editor A.
//   3. [with a third token] A2, a second connection of A's user, joins after B.
//   4. A is destroyed: B gets {"ycord":"left"} for A (with A's user's remaining connection count)
//      and an {"ycord":"editor"} event naming the new editor: A2 if present (same user first),
//      else B (the longest-present read-write connection).
//   5. [with A2] A2 is destroyed too: the editor becomes B.
//   6. C joins (with B's token); B's socket dies abruptly (no CLOSE): C gets "left" for B and an
//      "editor" event naming C.
// Without tokens (no --auth-secret) every connection is its own user "connection-<id>".
//   usage: node hocuspocus_roster.mjs <serverUrl> <room> [tokenA tokenB [tokenA2]]
import { init, step, log, socket, connect, destroy, waitSynced, waitEvent, waitFor, assert, jsonEqual, run } from './hocuspocus_lib.mjs'

const { serverUrl, room, args } = init('hocuspocus_roster', ['tokenA?', 'tokenB?', 'tokenA2?'])
const [tokenA = null, tokenB = null, tokenA2 = null] = args

const same = (x, y) => jsonEqual(x, y)
const userEntry = (roster, user) => roster.users.find((u) => u.user === user)

run(async () => {
  step('A joins: its roster must name it the editor')
  const A = connect(socket(serverUrl), room, { label: 'A', token: tokenA })
  await waitSynced([A])
  const rosterA = await waitEvent(A, 'roster')
  log(`A's roster: ${JSON.stringify(rosterA)}`)
  const youA = rosterA.you
  assert(youA && typeof youA.user === 'string' && youA.connection !== undefined, `roster.you: ${JSON.stringify(youA)}`)
  assert(Object.keys(youA).length === 2, `roster.you has exactly user and connection: ${JSON.stringify(youA)}`)
  if (!tokenA) assert(youA.user === `connection-${youA.connection}`, `without auth the user is connection-<id>: ${JSON.stringify(youA)}`)
  assert(same(rosterA.editor, youA), `A's roster editor is ${JSON.stringify(rosterA.editor)}, expected A ${JSON.stringify(youA)}`)
  assert(Array.isArray(rosterA.users) && rosterA.users.length === 1, `A's roster users: ${JSON.stringify(rosterA.users)}`)
  assert(same(rosterA.users[0], { user: youA.user, connections: 1, mode: 'rw' }), `A's roster entry: ${JSON.stringify(rosterA.users[0])}`)
  assert(A.ycord('roster').length === 1, 'A got one roster')

  step('B joins: A must get "joined" for B; B\'s roster must list both, editor A')
  const B = connect(socket(serverUrl), room, { label: 'B', token: tokenB })
  await waitSynced([B])
  const rosterB = await waitEvent(B, 'roster')
  log(`B's roster: ${JSON.stringify(rosterB)}`)
  const youB = rosterB.you
  assert(!same(youB, youA) && youB.connection !== youA.connection, `B's identity ${JSON.stringify(youB)} is A's`)
  const sameUser = youA.user === youB.user
  assert(same(rosterB.editor, youA), `B's roster editor is ${JSON.stringify(rosterB.editor)}, expected A`)
  if (sameUser) {
    assert(same(userEntry(rosterB, youA.user), { user: youA.user, connections: 2, mode: 'rw' }), `B's roster: ${JSON.stringify(rosterB.users)}`)
  } else {
    assert(rosterB.users.length === 2, `B's roster users: ${JSON.stringify(rosterB.users)}`)
    assert(same(userEntry(rosterB, youA.user), { user: youA.user, connections: 1, mode: 'rw' }), `A in B's roster: ${JSON.stringify(rosterB.users)}`)
    assert(same(userEntry(rosterB, youB.user), { user: youB.user, connections: 1, mode: 'rw' }), `B in B's roster: ${JSON.stringify(rosterB.users)}`)
  }
  const joinedB = await waitEvent(A, 'joined', (e) => e.connection === youB.connection, 'A gets "joined" for B')
  assert(same(joinedB, { ycord: 'joined', user: youB.user, connection: youB.connection, connections: sameUser ? 2 : 1 }),
    `A's joined event: ${JSON.stringify(joinedB)}`)
  assert(B.ycord('joined').length === 0, `B got joined events for itself or A: ${JSON.stringify(B.ycord('joined'))}`)
  assert(A.ycord('editor').length === 0 || A.ycord('editor').every((e) => same(e.editor, youA)),
    `the editor changed when B joined: ${JSON.stringify(A.ycord('editor'))}`)

  let A2 = null
  let youA2 = null
  if (tokenA2) {
    step("A2 (A's user, third socket) joins after B")
    A2 = connect(socket(serverUrl), room, { label: 'A2', token: tokenA2 })
    await waitSynced([A2])
    youA2 = (await waitEvent(A2, 'roster')).you
    assert(youA2.user === youA.user, `A2 must be A's user: ${JSON.stringify(youA2)} vs ${JSON.stringify(youA)}`)
    const joinedA2 = await waitEvent(B, 'joined', (e) => e.connection === youA2.connection, 'B gets "joined" for A2')
    assert(joinedA2.connections === 2, `joined for A2: ${JSON.stringify(joinedA2)}`)
  }

  step('A is destroyed: B must get "left" for A and the new editor')
  const editorEventsBefore = B.ycord('editor').length
  destroy(A)
  const left = await waitEvent(B, 'left', (e) => e.connection === youA.connection, 'B gets "left" for A')
  const remaining = (sameUser ? 1 : 0) + (A2 ? 1 : 0)
  assert(same(left, { ycord: 'left', user: youA.user, connection: youA.connection, connections: remaining }),
    `B's left event: ${JSON.stringify(left)} (expected ${remaining} remaining connection(s) of ${youA.user})`)
  const heir = A2 ? youA2 : youB
  // The first editor event after A left that names someone (a transient null is tolerated).
  const named = () => B.ycord('editor').slice(editorEventsBefore).find((e) => e.editor !== null)
  await waitFor(() => named() !== undefined, 'B gets an "editor" event naming the new editor after A left')
  const editor = named()
  assert(same(editor, { ycord: 'editor', editor: heir }),
    `new editor: ${JSON.stringify(editor)}, expected ${A2 ? 'A2 (same user as A)' : 'B'} ${JSON.stringify(heir)}`)
  if (A2) {
    await waitEvent(A2, 'editor', (e) => same(e.editor, youA2), 'A2 learns it is the editor')

    step('A2 is destroyed: the editor becomes B')
    destroy(A2)
    await waitEvent(B, 'left', (e) => e.connection === youA2.connection && e.connections === 0, 'B gets "left" for A2 with 0 connections')
    await waitEvent(B, 'editor', (e) => same(e.editor, youB), 'B gets "editor" naming B')
  }
  const last = B.ycord('editor').at(-1)
  assert(same(last.editor, youB), `B's last editor event names ${JSON.stringify(last.editor)}, expected B`)

  step("C joins (B's token); then B's socket dies abruptly: C gets \"left\" for B and becomes the editor")
  const C = connect(socket(serverUrl), room, { label: 'C', token: tokenB })
  await waitSynced([C])
  const rosterC = await waitEvent(C, 'roster')
  const youC = rosterC.you
  assert(same(rosterC.editor, youB), `C's roster editor is ${JSON.stringify(rosterC.editor)}, expected B`)
  const cEditorsBefore = C.ycord('editor').length
  B.ws.shouldConnect = false
  B.ws.webSocket.terminate()
  const leftB = await waitEvent(C, 'left', (e) => e.connection === youB.connection, 'C gets "left" for B')
  assert(leftB.connections === (youC.user === youB.user ? 1 : 0), `left for B: ${JSON.stringify(leftB)}`)
  await waitFor(() => C.ycord('editor').slice(cEditorsBefore).some((e) => same(e.editor, youC)), 'C gets "editor" naming C')
})
