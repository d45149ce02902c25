// Token refresh with the stock Hocuspocus provider (server with --auth-secret): the provider's
// `token` is a function (as applications fetch tokens), first giving a token that expires in a
// few seconds, then a long-lived one. Before the first expires, ycord asks for a fresh token
// (an Auth Token message); the provider calls the function again and sends the result. Past the
// first token's expiry the document must still be open: no authenticationFailed, and an edit
// made then is acknowledged (unsynced changes back to 0) and reaches a second provider.
//   usage: node hocuspocus_token_refresh.mjs <serverUrl> <room> <shortToken> <longToken> <expiresInMs>
import { init, step, log, socket, connect, waitSynced, waitAllSaved, waitFor, sleep, assert, run } from './hocuspocus_lib.mjs'

const { serverUrl, room, args } = init('hocuspocus_token_refresh', ['shortToken', 'longToken', 'expiresInMs'])
const [shortToken, longToken, expiresInMs] = args

run(async () => {
  let asked = 0
  const token = async () => (asked++ === 0 ? shortToken : longToken)
  step('A joins with the short-lived token')
  const A = connect(socket(serverUrl), room, { label: 'A', token })
  await waitSynced([A])
  const reader = connect(socket(serverUrl), room, { label: 'B', token: longToken })
  await waitSynced([reader])

  step('wait past the first token\'s expiry')
  await sleep(Number(expiresInMs) + 1000)
  log(`the token function was called ${asked} times`)
  assert(asked >= 2, 'ycord never asked for a fresh token')
  assert(A.events.failed.length === 0, `A was refused: ${JSON.stringify(A.events.failed)}`)

  step('A edits: acknowledged and relayed')
  A.doc.getText('text').insert(0, 'after refresh')
  await waitAllSaved([A])
  await waitFor(() => reader.text() === 'after refresh', 'B sees the edit made after the refresh')
})
