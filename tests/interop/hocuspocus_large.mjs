// A large document with the stock Hocuspocus provider: A writes ~2 MB of text in one
// transaction (one ~2 MB Update message); B (another socket, already synced) receives it
// whole, A's change is acknowledged (unsynced back to 0), and a late joiner C receives it whole
// in its SyncStep2.
//   usage: node hocuspocus_large.mjs <serverUrl> <room> [bytes]
import { init, step, socket, connect, waitSynced, waitAllSaved, waitFor, assert, run } from './hocuspocus_lib.mjs'

const { serverUrl, room, args } = init('hocuspocus_large', ['bytes?'])
const bytes = Number(args[0] ?? 2 * 1024 * 1024)

// Deterministic, not very compressible content: line numbers and a running hash.
const makeText = (n) => {
  const parts = []
  let size = 0
  let h = 2166136261
  for (let i = 0; size < n; i++) {
    h = Math.imul(h ^ i, 16777619) >>> 0
    const line = `${i}:${h.toString(36)}:lorem ipsum dolor sit amet\n`
    parts.push(line)
    size += line.length
  }
  return parts.join('').slice(0, n)
}

run(async () => {
  const big = makeText(bytes)
  step('A and B join')
  const A = connect(socket(serverUrl), room, { label: 'A' })
  const B = connect(socket(serverUrl), room, { label: 'B' })
  await waitSynced([A, B])

  step(`A inserts ${big.length} characters in one transaction`)
  let updates = 0
  A.doc.on('update', (_update, origin) => { if (origin !== A.provider) updates += 1 })
  A.doc.transact(() => {
    A.doc.getText('text').insert(0, big)
    A.doc.getMap('meta').set('length', big.length)
  })
  assert(updates === 1, `one transaction made ${updates} updates`)

  step('B must receive it whole; A must get its acknowledgement')
  await waitFor(() => B.doc.getText('text').length === big.length, `B has ${big.length} characters`)
  assert(B.text() === big, 'B has different content')
  assert(B.doc.getMap('meta').get('length') === big.length, 'B has the meta map')
  await waitAllSaved([A, B])

  step('late joiner C must receive it whole')
  const C = connect(socket(serverUrl), room, { label: 'C' })
  await waitSynced([C])
  await waitFor(() => C.doc.getText('text').length === big.length, `C has ${big.length} characters`)
  assert(C.text() === big, 'C has different content')
  await waitAllSaved([C])
  for (const c of [A, B, C]) assert(c.ws.identifier === 1, `${c.label}'s socket reconnected`)
})
