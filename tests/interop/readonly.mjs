// Read-only access with the stock client: a provider with a read-only token syncs and receives
// a writer's edits, but its own edits are refused by the server (permission-denied Auth
// message) and never reach the writer nor a fresh joiner.
//   usage: node readonly.mjs <serverUrl> <room> <rwToken> <roToken>
import * as authProtocol from 'y-protocols/auth'
import { init, log, step, connect, waitFor, waitSynced, sleep, run, assert, setDiagnostics } from './lib.mjs'

const { serverUrl, room } = init('readonly')
const [rwToken, roToken] = process.argv.slice(4)
if (!rwToken || !roToken) {
  console.error('usage: node readonly.mjs <serverUrl> <room> <rwToken> <roToken>')
  process.exit(2)
}

const text = (c) => c.doc.getText('text').toString()

run(async () => {
  step('connecting a read-write provider W and a read-only provider R')
  const W = connect(serverUrl, room, { params: { token: rwToken } })
  const R = connect(serverUrl, room, { params: { token: roToken } })
  const seen = { W, R }
  setDiagnostics(() => Object.entries(seen).map(([k, c]) => `\n  ${k}: ${JSON.stringify(text(c))}`).join(''))

  // Record the permission-denied messages R receives (the stock handler only logs them).
  const denials = []
  R.provider.messageHandlers[2] = (_encoder, decoder, provider) => {
    authProtocol.readAuthMessage(decoder, provider.doc, (_doc, reason) => denials.push(reason))
  }
  await waitSynced(W.provider, R.provider)

  step('W inserts "from-rw "; waiting for R to receive it')
  W.doc.getText('text').insert(0, 'from-rw ')
  await waitFor(() => text(R) === 'from-rw ', 'R sees from-rw')

  step('R inserts "from-ro "; waiting for the server to refuse it (permission denied)')
  R.doc.getText('text').insert(0, 'from-ro ')
  await waitFor(() => denials.length > 0, 'R receives a permission-denied Auth message')
  log(`denied: ${denials[0]}`)

  step('a fresh read-write provider F joins: it must see from-rw and not from-ro')
  const F = connect(serverUrl, room, { params: { token: rwToken } })
  seen.F = F
  await waitSynced(F.provider)
  await waitFor(() => text(F).includes('from-rw'), 'F sees from-rw')
  assert(!text(F).includes('from-ro'), `the read-only edit reached the room: F sees ${JSON.stringify(text(F))}`)

  step('W appends "more "; R (still connected) and F must receive it')
  W.doc.getText('text').insert(text(W).length, 'more ')
  await waitFor(() => text(R).includes('more') && text(F).includes('more'), 'R and F see more')
  assert(R.provider.wsconnected, 'the read-only connection was closed')

  step('after a grace period W and F still must not have the read-only edit')
  await sleep(300)
  assert(!text(W).includes('from-ro'), `W received the read-only edit: ${JSON.stringify(text(W))}`)
  assert(!text(F).includes('from-ro'), `F received the read-only edit: ${JSON.stringify(text(F))}`)
  assert(text(W) === 'from-rw more ', `W has ${JSON.stringify(text(W))}`)
})
