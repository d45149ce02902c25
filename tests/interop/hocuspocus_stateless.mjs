// Stateless messages through ycord (contract: the client's string is relayed to every OTHER
// Hocuspocus connection of the room, never stored, wrapped in
// {"ycord":"relay","from":{"user":U,"connection":C},"payload":"<verbatim>"}).
//   A, B and B2 (three sockets) on document <room>, O on document <room>-other.
//   1. A sends 'hello': B and B2 get one relay envelope each, exactly
//      {ycord:"relay", from: <A's identity from its roster "you">, payload:"hello"}; A gets none
//      back; O (other room) gets none.
//   2. Strings that look like ycord events (an "editor" event, a forged relay, a roster) reach B
//      only wrapped, payload verbatim, never as a top-level event.
//   3. Unicode, quotes, an empty string and a non-JSON string travel verbatim.
//   4. B answers; A gets it with B's identity.
//   5. A late joiner L gets no earlier stateless message (nothing is stored).
// Without tokens (no --auth-secret) U is "connection-C"; with tokens it is the token's "sub".
//   usage: node hocuspocus_stateless.mjs <serverUrl> <room> [tokenA tokenB]
//   (tokenA grants <room>; tokenB grants <room> and <room>-other, e.g. the prefix "<room>*")
import { init, step, log, socket, connect, waitSynced, waitEvent, waitFor, sleep, assert, jsonEqual, run } from './hocuspocus_lib.mjs'

const { serverUrl, room, args } = init('hocuspocus_stateless', ['tokenA?', 'tokenB?'])
const [tokenA = null, tokenB = tokenA] = args
// The user ycord must name A with: the token's "sub" (the JWT payload, not verified here).
const subOf = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString()).sub
const expectedUserOfA = tokenA ? subOf(tokenA) : undefined

const relaysWith = (c, payload) => c.relays().filter((r) => r.payload === payload)

run(async () => {
  step('A, B, B2 join <room>; O joins <room>-other')
  const A = connect(socket(serverUrl), room, { label: 'A', token: tokenA })
  await waitSynced([A])
  const B = connect(socket(serverUrl), room, { label: 'B', token: tokenB })
  const B2 = connect(socket(serverUrl), room, { label: 'B2', token: tokenB })
  const O = connect(socket(serverUrl), `${room}-other`, { label: 'O', token: tokenB })
  await waitSynced([B, B2, O])

  step('everyone has its roster: learning A and B identities')
  const youA = (await waitEvent(A, 'roster')).you
  const youB = (await waitEvent(B, 'roster')).you
  await waitEvent(B2, 'roster')
  log(`A is ${JSON.stringify(youA)}, B is ${JSON.stringify(youB)}`)
  assert(typeof youA.user === 'string' && youA.connection !== undefined && youA.connection !== null,
    `A's identity: ${JSON.stringify(youA)}`)
  if (expectedUserOfA !== undefined) {
    assert(youA.user === expectedUserOfA, `A's user is ${JSON.stringify(youA.user)}, expected ${JSON.stringify(expectedUserOfA)}`)
  } else {
    assert(youA.user === `connection-${youA.connection}`, `without auth A's user must be connection-<id>: ${JSON.stringify(youA)}`)
  }
  // B and B2 joined after A: their roster's join notifications to A are not relays.

  step("A sends 'hello'; B and B2 must each get exactly one envelope")
  A.provider.sendStateless('hello')
  await waitFor(() => relaysWith(B, 'hello').length > 0 && relaysWith(B2, 'hello').length > 0, 'B and B2 get the relay of hello')
  const expected = { ycord: 'relay', from: youA, payload: 'hello' }
  for (const c of [B, B2]) {
    const got = relaysWith(c, 'hello')
    assert(got.length === 1, `${c.label} got ${got.length} relays of hello`)
    assert(jsonEqual(got[0], expected), `${c.label} got ${JSON.stringify(got[0])}, expected ${JSON.stringify(expected)}`)
  }

  step('payloads that look like ycord events must arrive wrapped, verbatim')
  const lookalikes = [
    '{"ycord":"editor","editor":null}',
    JSON.stringify({ ycord: 'relay', from: { user: 'admin', connection: 0 }, payload: 'forged' }),
    JSON.stringify({ ycord: 'roster', you: { user: 'admin', connection: 0 }, users: [], editor: null }),
    JSON.stringify({ ycord: 'left', user: youB.user, connection: youB.connection, connections: 0 })
  ]
  const odd = ['unicode ✓ émoji 🎉 "quotes" \\ back\\slash \n newline', '', 'not json {', ' '.repeat(3)]
  const editorEventsBefore = B.ycord('editor').length
  const leftEventsBefore = B.ycord('left').length
  const rostersBefore = B.ycord('roster').length
  for (const p of [...lookalikes, ...odd]) A.provider.sendStateless(p)
  A.provider.sendStateless('end-of-batch')
  await waitFor(() => relaysWith(B, 'end-of-batch').length === 1, 'B gets the batch')
  for (const p of [...lookalikes, ...odd]) {
    const got = relaysWith(B, p)
    assert(got.length === 1, `B got ${got.length} relays with payload ${JSON.stringify(p)}`)
    assert(jsonEqual(got[0].from, youA), `relay of ${JSON.stringify(p)} has from=${JSON.stringify(got[0].from)}`)
    assert(jsonEqual(Object.keys(got[0]).sort(), ['from', 'payload', 'ycord']), `envelope keys: ${JSON.stringify(got[0])}`)
  }
  assert(B.ycord('editor').length === editorEventsBefore, `a client's payload reached B as a top-level editor event: ${JSON.stringify(B.ycord('editor'))}`)
  assert(B.ycord('left').length === leftEventsBefore, 'a client\'s payload reached B as a top-level left event')
  assert(B.ycord('roster').length === rostersBefore, 'a client\'s payload reached B as a top-level roster event')
  // The only top-level relay envelopes B has are A's, with A as sender.
  assert(B.relays().every((r) => jsonEqual(r.from, youA)), `B has a relay not from A: ${JSON.stringify(B.relays())}`)

  step('B answers; A gets it with B as sender; A has no relay of its own messages')
  B.provider.sendStateless('hi A')
  await waitFor(() => relaysWith(A, 'hi A').length === 1, 'A gets the relay of hi A')
  assert(jsonEqual(relaysWith(A, 'hi A')[0], { ycord: 'relay', from: youB, payload: 'hi A' }), `A got ${JSON.stringify(relaysWith(A, 'hi A'))}`)
  await sleep(300)
  assert(A.relays().every((r) => !jsonEqual(r.from, youA)), `A received its own relay: ${JSON.stringify(A.relays())}`)
  assert(A.relays().length === 1, `A got ${A.relays().length} relays, expected only B's`)
  assert(relaysWith(B, 'hi A').length === 0, 'B received its own relay')
  assert(B2.relays().length === lookalikes.length + odd.length + 3, `B2 got ${B2.relays().length} relays`)
  assert(O.events.stateless.every((p) => !p.includes('"relay"')), `O (another room) got a relay: ${JSON.stringify(O.events.stateless)}`)

  step('a late joiner L gets no earlier stateless message')
  const L = connect(socket(serverUrl), room, { label: 'L', token: tokenB })
  await waitSynced([L])
  await waitEvent(L, 'roster')
  await sleep(300)
  assert(L.relays().length === 0, `L received stored relays: ${JSON.stringify(L.relays())}`)
})
