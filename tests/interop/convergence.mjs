// Three clients edit concurrently and must converge; a late fourth client must
// receive everything.   usage: node convergence.mjs <serverUrl> <room>
import { Y, init, step, connect, waitFor, waitSynced, run, assert, setDiagnostics } from './lib.mjs'

const { serverUrl, room } = init('convergence')

const content = (doc) => JSON.stringify({
  text: doc.getText('text').toString(),
  map: Object.fromEntries(Object.entries(doc.getMap('map').toJSON()).sort()), // key order is local
  array: doc.getArray('array').toJSON()
})
// state vector as a client-sorted list, so the comparison is independent of encoding order
const stateVector = (doc) =>
  JSON.stringify([...Y.decodeStateVector(Y.encodeStateVector(doc))].sort((a, b) => a[0] - b[0]))

const hasAllEdits = (doc, n) => {
  const text = doc.getText('text').toString()
  const map = doc.getMap('map')
  const array = doc.getArray('array').toArray()
  for (let i = 0; i < n; i++) {
    if (!text.includes(`<edit-${i}>`) || map.get(`key-${i}`) !== i || !array.includes(`item-${i}`)) return false
  }
  return map.has('shared')
}

run(async () => {
  step('connecting 3 providers')
  const clients = [0, 1, 2].map(() => connect(serverUrl, room))
  const all = clients.slice()
  setDiagnostics(() => all.map((c, i) => `\n  doc${i} synced=${c.provider.synced} sv=${stateVector(c.doc)} ${content(c.doc)}`).join(''))
  await waitSynced(...clients.map(c => c.provider))

  step('all synced; editing concurrently (text, map, array)')
  clients.forEach(({ doc }, i) => {
    doc.getText('text').insert(0, `<edit-${i}>`)
    doc.getMap('map').set(`key-${i}`, i)
    doc.getMap('map').set('shared', `written-by-${i}`) // concurrent conflict on one key
    doc.getArray('array').push([`item-${i}`])
  })

  step('waiting for the 3 docs to converge with every edit')
  const docs = clients.map(c => c.doc)
  await waitFor(() =>
    docs.every(d => hasAllEdits(d, 3)) &&
    docs.every(d => content(d) === content(docs[0]) && stateVector(d) === stateVector(docs[0])),
  'convergence')
  step(`converged: ${content(docs[0])}`)

  step('connecting late 4th provider')
  const late = connect(serverUrl, room)
  all.push(late)
  await waitSynced(late.provider)
  step('late provider synced; waiting for it to hold everything')
  await waitFor(() => content(late.doc) === content(docs[0]) && stateVector(late.doc) === stateVector(docs[0]),
    'late provider content')
  assert(hasAllEdits(late.doc, 3), 'late provider is missing edits')
  step('late provider has identical content')
})
