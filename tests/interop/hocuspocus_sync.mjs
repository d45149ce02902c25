// Sync with the stock Hocuspocus provider: two providers on separate sockets (the server's
// root url, document <room>) sync, edit one Y.Text concurrently and converge; both see their
// unsynced changes go back to 0 (the server acknowledges every update with SyncStatus) and
// fire 'synced'. A late third provider receives the merged content.
//   usage: node hocuspocus_sync.mjs <serverUrl> <room>      (room must be new/empty)
import { init, step, socket, connect, waitSynced, waitAllSaved, waitFor, assert, run, Y } from './hocuspocus_lib.mjs'

const { serverUrl, room } = init('hocuspocus_sync')

run(async () => {
  step('connecting A and B on two sockets')
  const A = connect(socket(serverUrl), room, { label: 'A' })
  const B = connect(socket(serverUrl), room, { label: 'B' })
  await waitSynced([A, B])
  assert(A.text() === '' && B.text() === '', 'the room must be fresh')
  await waitAllSaved([A, B])
  assert(A.events.authenticated.length === 1 && B.events.authenticated.length === 1,
    'each provider is authenticated once')

  step('A and B edit concurrently')
  const unsyncedBefore = [A.events.unsynced.length, B.events.unsynced.length]
  A.doc.getText('text').insert(0, 'from-A ')
  A.doc.getMap('map').set('a', 1)
  B.doc.getText('text').insert(0, 'from-B ')
  B.doc.getMap('map').set('b', 2)
  assert(A.provider.hasUnsyncedChanges && B.provider.hasUnsyncedChanges, 'local edits count as unsynced')

  step('waiting for both to converge')
  await waitFor(() => A.text() === B.text() && A.text().includes('from-A ') && A.text().includes('from-B '),
    'A and B have both edits')
  await waitFor(() => A.doc.getMap('map').size === 2 && B.doc.getMap('map').size === 2, 'both map keys on both')

  step('waiting for the unsynced changes of both to reach 0')
  await waitAllSaved([A, B])
  assert(A.events.unsynced.slice(unsyncedBefore[0]).includes(0), 'A emitted unsyncedChanges 0 after its edit')
  assert(B.events.unsynced.slice(unsyncedBefore[1]).includes(0), 'B emitted unsyncedChanges 0 after its edit')
  const sv = (c) => Buffer.from(Y.encodeStateVector(c.doc)).toString('hex')
  assert(sv(A) === sv(B), 'A and B have the same state vector')

  step('a late provider C receives the merged content')
  const C = connect(socket(serverUrl), room, { label: 'C' })
  await waitSynced([C])
  await waitFor(() => C.text() === A.text(), 'C has the merged text')
  assert(C.doc.getMap('map').get('a') === 1 && C.doc.getMap('map').get('b') === 2, 'C has the map')
  await waitAllSaved([C])
})
