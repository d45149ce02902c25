// The per-socket document limit (--max-documents-per-connection <max>): ONE socket attaches
// <max> + 2 documents (<room>-0 ..): exactly <max> are authenticated and sync, the other two get
// PermissionDenied (authenticationFailed) and never sync, and the socket stays open. When one
// synced provider is destroyed (CLOSE), a new provider for a refused document on the same socket
// is accepted. A second socket is not affected by the first one's count.
//   usage: node hocuspocus_doc_limit.mjs <serverUrl> <room> <max>
import { init, step, log, socket, connect, destroy, waitSynced, waitAllSaved, waitFor, sleep, assert, run } from './hocuspocus_lib.mjs'

const { serverUrl, room, args } = init('hocuspocus_doc_limit', ['max'])
const max = Number(args[0])

run(async () => {
  step(`one socket attaches ${max + 2} documents`)
  const ws = socket(serverUrl)
  const all = Array.from({ length: max + 2 }, (_, i) => connect(ws, `${room}-${i}`, { label: `#${i}` }))
  await waitFor(() => all.filter((c) => c.events.failed.length > 0).length === 2 && all.filter((c) => c.provider.isSynced).length === max,
    `${max} synced and 2 refused`)
  await sleep(300)
  const accepted = all.filter((c) => c.provider.isSynced)
  const refused = all.filter((c) => c.events.failed.length > 0)
  log(`refused: ${refused.map((c) => `${c.label} ${JSON.stringify(c.events.failed)}`).join(', ')}`)
  assert(accepted.length === max && refused.length === 2, `${accepted.length} accepted, ${refused.length} refused`)
  assert(refused.every((c) => c.events.synced === 0 && c.events.authenticated.length === 0), 'a refused document synced')
  assert(ws.webSocket !== null && ws.identifier === 1, 'the socket was closed')
  await waitAllSaved(accepted)

  step('destroying one accepted provider frees a slot for a refused one attaching again')
  destroy(accepted[0])
  await sleep(300)
  // The stock way to retry: a new provider for the refused document on the same socket (the
  // websocket lets it replace a provider that is not authenticated; the old one sends nothing).
  refused[0].destroyed = true // not destroyed at the end either: that would send CLOSE for the key
  const retried = connect(ws, refused[0].name, { label: `${refused[0].label}-retry` })
  await waitSynced([retried])
  assert(retried.events.authenticated.includes('read-write'), `the retried document: ${JSON.stringify(retried.events)}`)
  retried.doc.getText('text').insert(0, 'retried ')
  await waitAllSaved([retried])

  step('a second socket is not limited by the first one')
  const other = socket(serverUrl)
  const second = [connect(other, refused[1].name, { label: 'S2-a' }), connect(other, retried.name, { label: 'S2-b' })]
  await waitSynced(second)
  await waitFor(() => second[1].text() === 'retried ', "the second socket sees the retried document's edit")
  assert(refused[1].events.synced === 0, 'the still-refused provider synced')
})
