// Mixed dialects on one room: a stock y-websocket WebsocketProvider on <serverUrl>/<room> and
// a stock Hocuspocus provider on document <room> at <serverUrl> (the root) share the room:
//   1. Y (y-websocket) writes first; H (Hocuspocus) joins and receives it.
//   2. Both edit concurrently; both converge; H's edit is acknowledged (unsynced 0).
//   3. Awareness both ways: each sees the other's state, including a change.
//   4. A late Hocuspocus joiner H2 sees Y's state and the merged text; a late y-websocket
//      joiner Y2 sees H's state.
//   5. H is destroyed: Y sees its state removed. Y is destroyed: H2 sees its state removed.
//   usage: node hocuspocus_mixed.mjs <serverUrl> <room>      (room must be new/empty)
import { connect as connectYws } from './lib.mjs'
import { init, step, socket, connect, destroy, onCleanup, waitSynced, waitAllSaved, waitFor, assert, run, describe } from './hocuspocus_lib.mjs'

const { serverUrl, room } = init('hocuspocus_mixed')

const yws = []
const connectY = (label) => {
  const c = connectYws(serverUrl, room)
  c.label = label
  yws.push(c)
  return c
}
onCleanup(() => { for (const c of yws) { try { c.provider.destroy() } catch {} } })
const ytext = (c) => c.doc.getText('text').toString()
const stateIn = (awareness, doc) => awareness.getStates().get(doc.clientID)

run(async () => {
  step('Y (y-websocket, <url>/<room>) joins and writes')
  const Y = connectY('Y')
  Y.provider.awareness.setLocalStateField('user', { name: 'y-websocket' })
  await waitFor(() => Y.provider.synced, 'Y synced')
  Y.doc.getText('text').insert(0, 'from-yws ')

  step('H (Hocuspocus, root url, document <room>) joins and receives it')
  const H = connect(socket(serverUrl), room, { label: 'H' })
  H.provider.setAwarenessField('user', { name: 'hocuspocus' })
  await waitSynced([H])
  await waitFor(() => H.text() === 'from-yws ', "H has Y's text")

  step('both edit concurrently and converge')
  Y.doc.getText('text').insert(ytext(Y).length, 'y2 ')
  Y.doc.getMap('map').set('y', 1)
  H.doc.getText('text').insert(0, 'from-hp ')
  H.doc.getMap('map').set('h', 2)
  await waitFor(() => H.text() === ytext(Y) && H.text().includes('from-hp ') && H.text().includes('y2 '), 'Y and H converge')
  await waitFor(() => Y.doc.getMap('map').get('h') === 2 && H.doc.getMap('map').get('y') === 1, 'maps converge')
  await waitAllSaved([H])

  step('awareness both ways')
  await waitFor(() => stateIn(Y.provider.awareness, H.doc)?.user?.name === 'hocuspocus', "Y sees H's awareness")
  await waitFor(() => stateIn(H.provider.awareness, Y.doc)?.user?.name === 'y-websocket', "H sees Y's awareness")
  H.provider.setAwarenessField('cursor', 7)
  Y.provider.awareness.setLocalStateField('cursor', 9)
  await waitFor(() => stateIn(Y.provider.awareness, H.doc)?.cursor === 7, "Y sees H's cursor")
  await waitFor(() => stateIn(H.provider.awareness, Y.doc)?.cursor === 9, "H sees Y's cursor")

  step('late joiners of each dialect see the other dialect')
  const H2 = connect(socket(serverUrl), room, { label: 'H2' })
  await waitSynced([H2])
  await waitFor(() => H2.text() === ytext(Y), 'H2 has the merged text')
  await waitFor(() => stateIn(H2.provider.awareness, Y.doc)?.cursor === 9, "H2 sees Y's awareness")
  const Y2 = connectY('Y2')
  await waitFor(() => Y2.provider.synced && ytext(Y2) === H.text(), 'Y2 has the merged text')
  await waitFor(() => stateIn(Y2.provider.awareness, H.doc)?.cursor === 7, "Y2 sees H's awareness")

  step("H is destroyed: Y sees H's state removed")
  destroy(H)
  await waitFor(() => stateIn(Y.provider.awareness, H.doc) === undefined, "H's state removed on Y", 10000)
  step("Y is destroyed: H2 sees Y's state removed")
  Y.provider.destroy()
  await waitFor(() => stateIn(H2.provider.awareness, Y.doc) === undefined, "Y's state removed on H2", 10000)
  assert(ytext(Y2) === H2.text(), 'Y2 and H2 agree')
})
