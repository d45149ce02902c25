// Read-only access with the stock Hocuspocus provider (server with --auth-secret):
//   W (read-write token) writes; R (read-only token, "mode":"ro") gets Authenticated
//   "readonly", syncs the content, reaches 0 unsynced changes (its empty SyncStep2 is already
//   known) and its roster marks it "ro" and not the editor. R's own edit is NOT applied: the
//   server answers SyncStatus(0), so R's unsynced count stays above 0, and neither W nor a fresh
//   read-write joiner F ever sees it. R stays connected and keeps receiving W's edits.
//   usage: node hocuspocus_readonly.mjs <serverUrl> <room> <rwToken> <roToken>
import { init, step, log, socket, connect, waitSynced, waitAllSaved, waitEvent, waitFor, sleep, assert, jsonEqual, run } from './hocuspocus_lib.mjs'

const { serverUrl, room, args } = init('hocuspocus_readonly', ['rwToken', 'roToken'])
const [rwToken, roToken] = args

run(async () => {
  step('W (rw) joins and writes')
  const W = connect(socket(serverUrl), room, { label: 'W(rw)', token: rwToken })
  await waitSynced([W])
  assert(W.events.authenticated[0] === 'read-write', `W's scope: ${JSON.stringify(W.events.authenticated)}`)
  W.doc.getText('text').insert(0, 'from-rw ')
  await waitAllSaved([W])

  step('R (ro) joins: scope readonly, syncs the content')
  const R = connect(socket(serverUrl), room, { label: 'R(ro)', token: roToken })
  await waitSynced([R])
  assert(R.events.authenticated.length === 1 && R.events.authenticated[0] === 'readonly',
    `R's scope: ${JSON.stringify(R.events.authenticated)}`)
  assert(R.provider.authorizedScope === 'readonly', `R's authorizedScope: ${R.provider.authorizedScope}`)
  await waitFor(() => R.text() === 'from-rw ', 'R has the content')
  step('R has no edit of its own yet: its unsynced changes reach 0')
  await waitAllSaved([R])

  step("R's roster: mode ro, and R is not the editor")
  const roster = await waitEvent(R, 'roster')
  log(`R's roster: ${JSON.stringify(roster)}`)
  const mine = roster.users.find((u) => u.user === roster.you.user)
  assert(mine && mine.mode === 'ro', `R's roster entry: ${JSON.stringify(roster.users)}`)
  assert(!jsonEqual(roster.editor, roster.you), `a read-only connection was elected editor: ${JSON.stringify(roster)}`)

  step('R edits: the edit must not be acknowledged')
  const unsyncedAt = R.events.unsynced.length
  R.doc.getText('text').insert(0, 'from-ro ')
  assert(R.provider.hasUnsyncedChanges, 'the local edit counts as unsynced')
  await sleep(500)
  const after = R.events.unsynced.slice(unsyncedAt)
  assert(!after.includes(0), `R's read-only edit was acknowledged: unsyncedChanges events ${JSON.stringify(after)}`)
  assert(R.provider.unsyncedChanges > 0, `R's unsynced count is ${R.provider.unsyncedChanges}`)
  assert(!W.text().includes('from-ro'), `W received the read-only edit: ${JSON.stringify(W.text())}`)

  step('a fresh rw joiner F must see from-rw and not from-ro')
  const F = connect(socket(serverUrl), room, { label: 'F(rw)', token: rwToken })
  await waitSynced([F])
  await waitFor(() => F.text() === 'from-rw ', 'F has exactly from-rw')

  step('W appends; R (still connected) and F receive it')
  W.doc.getText('text').insert(W.text().length, 'more ')
  await waitFor(() => R.text().includes('more ') && F.text() === 'from-rw more ', 'R and F see more')
  assert(R.ws.webSocket !== null && R.ws.identifier === 1, 'the read-only socket was closed or reconnected')
  assert(R.events.failed.length === 0, `R got PermissionDenied: ${JSON.stringify(R.events.failed)}`)
  await waitAllSaved([W, F])
  await sleep(300)
  assert(!W.text().includes('from-ro') && !F.text().includes('from-ro'), `the read-only edit reached the room: W=${JSON.stringify(W.text())} F=${JSON.stringify(F.text())}`)
  assert(R.provider.unsyncedChanges > 0 && !R.events.unsynced.slice(unsyncedAt).includes(0),
    `R's unsynced count went back to 0 after its refused edit: ${JSON.stringify(R.events.unsynced.slice(unsyncedAt))}`)
})
