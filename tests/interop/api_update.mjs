// A stock provider receives a change made through the HTTP API: it connects and syncs, prints
// READY on stdout, then waits until its Y.Text 'text' contains <expected> (the parent posts an
// update to POST /api/rooms/<room>/update after READY) and prints DONE.
//   usage: node api_update.mjs <serverUrl> <room> <expected>
import { init, step, connect, waitFor, waitSynced, run, setDiagnostics } from './lib.mjs'

const { serverUrl, room } = init('api_update')
const expected = process.argv[4]
if (!expected) {
  console.error('usage: node api_update.mjs <serverUrl> <room> <expected>')
  process.exit(2)
}

run(async () => {
  step('connecting provider P')
  const P = connect(serverUrl, room)
  const text = () => P.doc.getText('text').toString()
  setDiagnostics(() => `P sees ${JSON.stringify(text())}`)
  await waitSynced(P.provider)
  console.log('READY')
  step(`waiting for the API's update: text containing ${JSON.stringify(expected)}`)
  await waitFor(() => text().includes(expected), 'P sees the posted text')
  console.log('DONE')
})
