// Opens ROOMS file rooms x PER_ROOM stock y-websocket connections to ycord (in ExApp mode with
// AppAPI headers as HaRP adds them, one Nextcloud user per connection; without them when the
// secret is "-"), waits until all are synced, prints "SYNCED", holds them until stdin closes.
//   usage: node idle.mjs <serverUrl> <appSecret|-> <rooms> <perRoom>
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const [serverUrl, secret, rooms, perRoom] = process.argv.slice(2)
const asUser = (user) => class extends WebSocket {
  constructor (url, protocols) {
    super(url, protocols, {
      headers: {
        'EX-APP-ID': 'ycord',
        'EX-APP-VERSION': '0.1.0',
        'AA-VERSION': '32.0.0',
        'AUTHORIZATION-APP-API': Buffer.from(`${user}:${secret}`).toString('base64')
      }
    })
  }
}
process.setMaxListeners(0)
const providers = []
for (let room = 1; room <= Number(rooms); room++) {
  for (let i = 0; i < Number(perRoom); i++) {
    const WebSocketPolyfill = secret === '-' ? WebSocket : asUser(`user${room}-${i}`)
    providers.push(new WebsocketProvider(serverUrl, `file:text/${room}`, new Y.Doc(), {
      WebSocketPolyfill, disableBc: true
    }))
  }
}
const started = Date.now()
const tick = () => {
  if (providers.every(p => p.synced)) {
    console.log(`SYNCED ${providers.length} in ${Date.now() - started} ms`)
  } else if (Date.now() - started > 60000) {
    console.log(`TIMEOUT ${providers.filter(p => p.synced).length}/${providers.length}`)
    process.exit(1)
  } else {
    setTimeout(tick, 50)
  }
}
tick()
process.stdin.on('end', () => process.exit(0))
process.stdin.resume()
