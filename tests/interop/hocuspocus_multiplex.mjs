// Multiplexing with the stock Hocuspocus provider: ONE HocuspocusProviderWebsocket carries
// <count> documents (<room>-0 .. <room>-<count-1>, 60 by default), one provider each; every
// provider edits its own document. A second socket with the same documents must see every edit,
// on the right document only, and its own edits must come back to the first socket; every
// provider's unsynced changes reach 0.
//   usage: node hocuspocus_multiplex.mjs <serverUrl> <room> [count]
import { init, step, socket, connect, waitSynced, waitAllSaved, waitFor, assert, run } from './hocuspocus_lib.mjs'

const { serverUrl, room, args } = init('hocuspocus_multiplex', ['count?'])
const count = Number(args[0] ?? 60)

run(async () => {
  const names = Array.from({ length: count }, (_, i) => `${room}-${i}`)

  step(`socket 1: ${count} providers on one websocket`)
  const ws1 = socket(serverUrl)
  const first = names.map((name, i) => connect(ws1, name, { label: `S1#${i}` }))
  await waitSynced(first)
  await waitAllSaved(first)

  step('socket 1: every provider edits its own document')
  first.forEach((c, i) => c.doc.getText('text').insert(0, `s1-doc-${i};`))
  await waitAllSaved(first)

  step(`socket 2: the same ${count} documents on a second websocket`)
  const ws2 = socket(serverUrl)
  const second = names.map((name, i) => connect(ws2, name, { label: `S2#${i}` }))
  await waitSynced(second)
  await waitFor(() => second.every((c, i) => c.text() === `s1-doc-${i};`), 'socket 2 sees every edit of socket 1 on the right document')
  await waitAllSaved(second)

  step('socket 2 edits every document; socket 1 must see each edit live')
  second.forEach((c, i) => { const t = c.doc.getText('text'); t.insert(t.length, `s2-doc-${i};`) })
  await waitFor(() => first.every((c, i) => c.text() === `s1-doc-${i};s2-doc-${i};`), 'socket 1 sees every edit of socket 2 on the right document')
  await waitFor(() => second.every((c, i) => c.text() === first[i].text()), 'both sockets agree on every document')
  await waitAllSaved([...first, ...second])
  assert(ws1.webSocket !== null && ws2.webSocket !== null, 'both websockets still open')
  assert(ws1.identifier === 1 && ws2.identifier === 1, `a websocket reconnected (attempts: ${ws1.identifier}, ${ws2.identifier})`)
  assert(first.every((c) => c.events.authenticated.length === 1 && c.events.failed.length === 0),
    'every provider on socket 1 authenticated exactly once, none refused')
})
