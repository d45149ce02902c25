// Per-document authentication with the stock Hocuspocus provider (server with --auth-secret;
// the upgrade at the root is accepted without a token, each document is decided by its Auth
// message; a refused document gets PermissionDenied and the socket stays open).
//   S1 carries X (document <room>, a bad token) and G2 (document <room>-b, the good token):
//      X fires authenticationFailed and never syncs while G2 syncs on the same socket.
//   S2: O (document <room>, a valid token for another room) fails the same way.
//   S3: N (document <room>, no token at all) fails.
//   S4: E (document <room>, an expired token) fails (when given).
//   S5: G (document <room>, the good token) syncs and edits; the refused providers never
//      receive the content nor G's awareness, and their own edits never reach G.
//   usage: node hocuspocus_auth.mjs <serverUrl> <room> <goodToken> <badToken> <otherRoomToken> [expiredToken]
//   (goodToken must grant <room> and <room>-b read-write, e.g. the prefix grant "<room>*")
import { init, step, log, socket, connect, waitSynced, waitAllSaved, waitFor, sleep, assert, run } from './hocuspocus_lib.mjs'

const { serverUrl, room, args } = init('hocuspocus_auth', ['goodToken', 'badToken', 'otherRoomToken', 'expiredToken?'])
const [goodToken, badToken, otherRoomToken, expiredToken] = args

run(async () => {
  step('S1: X (bad token) and G2 (good token, <room>-b) on one socket')
  const S1 = socket(serverUrl)
  const X = connect(S1, room, { label: 'X(bad)', token: badToken })
  const G2 = connect(S1, `${room}-b`, { label: 'G2(good,-b)', token: goodToken })
  const O = connect(socket(serverUrl), room, { label: 'O(other room)', token: otherRoomToken })
  const N = connect(socket(serverUrl), room, { label: 'N(no token)' })
  const refused = [X, O, N]
  if (expiredToken) refused.push(connect(socket(serverUrl), room, { label: 'E(expired)', token: expiredToken }))

  step('the refused providers must fire authenticationFailed')
  await waitFor(() => refused.every((c) => c.events.failed.length > 0),
    `authenticationFailed on: ${refused.filter((c) => c.events.failed.length === 0).map((c) => c.label).join(', ')}`)
  for (const c of refused) log(`${c.label} refused: ${JSON.stringify(c.events.failed)}`)

  step('G2 syncs on the socket where X was refused')
  await waitSynced([G2])
  assert(G2.events.authenticated[0] === 'read-write', `G2's scope: ${JSON.stringify(G2.events.authenticated)}`)
  G2.doc.getText('text').insert(0, 'g2 ')
  await waitAllSaved([G2])
  assert(S1.webSocket !== null && S1.identifier === 1, 'the socket of a refused document stays open (no reconnect)')

  step('G (good token) syncs <room> and edits it; the refused ones edit locally')
  const G = connect(socket(serverUrl), room, { label: 'G(good)', token: goodToken })
  G.provider.setAwarenessField('user', { name: 'good' })
  await waitSynced([G])
  assert(G.events.authenticated[0] === 'read-write', `G's scope: ${JSON.stringify(G.events.authenticated)}`)
  G.doc.getText('text').insert(0, 'secret ')
  for (const c of refused) c.doc.getText('text').insert(0, `intruder-${c.label} `)
  await waitAllSaved([G])

  step('grace period: nothing may cross between G and the refused providers')
  const late = connect(socket(serverUrl), room, { label: 'late(good)', token: goodToken })
  await waitSynced([late])
  await waitFor(() => late.text() === 'secret ', 'a fresh good provider sees exactly G\'s edit')
  await sleep(500)
  for (const c of refused) {
    assert(c.events.synced === 0 && !c.provider.isSynced, `${c.label} synced although refused`)
    assert(c.events.authenticated.length === 0, `${c.label} got Authenticated: ${JSON.stringify(c.events.authenticated)}`)
    assert(!c.text().includes('secret'), `${c.label} received the document: ${JSON.stringify(c.text())}`)
    assert(!c.provider.awareness.getStates().has(G.doc.clientID), `${c.label} received G's awareness`)
    assert(c.relays().length === 0 && c.ycord('roster').length === 0, `${c.label} received ycord events: ${JSON.stringify(c.events.stateless)}`)
  }
  assert(!G.text().includes('intruder'), `a refused provider's edit reached the room: ${JSON.stringify(G.text())}`)
  assert(late.text() === 'secret ', `the room holds ${JSON.stringify(late.text())}`)
  assert(![...G.provider.awareness.getStates().keys()].some((id) => refused.some((c) => c.doc.clientID === id)),
    'a refused provider\'s awareness reached G')
})
