// Shared helpers for the interop scenarios: argument parsing, step logging,
// a hard overall timeout, provider creation and polling waits.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

export { Y }

let scenario = 'interop'
let currentStep = 'starting'
let diagnostics = null
const providers = []

export const log = (msg) => console.error(`[${scenario}] ${msg}`)

/** Log a step and remember it, so a timeout can say what it was waiting for. */
export const step = (msg) => {
  currentStep = msg
  log(msg)
}

/**
 * Parse `<serverUrl> <room>` from argv and arm the hard overall timeout.
 * INTEROP_TIMEOUT_MS overrides the default (20 s).
 */
export const init = (name, timeoutMs = Number(process.env.INTEROP_TIMEOUT_MS) || 20000) => {
  scenario = name
  const [serverUrl, room] = process.argv.slice(2)
  if (!serverUrl || !room) {
    console.error(`usage: node ${name}.mjs <serverUrl> <room>`)
    process.exit(2)
  }
  setTimeout(() => {
    log(`FAIL: timed out after ${timeoutMs} ms while: ${currentStep}`)
    printDiagnostics()
    process.exit(1)
  }, timeoutMs)
  return { serverUrl, room }
}

/** Register a function whose result is printed when the scenario fails, to show the state seen. */
export const setDiagnostics = (fn) => { diagnostics = fn }

const printDiagnostics = () => {
  if (diagnostics) {
    try { log(`state: ${diagnostics()}`) } catch (e) { log(`state: (diagnostics failed: ${e})`) }
  }
}

/**
 * A WebsocketProvider on a fresh Y.Doc. BroadcastChannel is disabled: Node 20
 * has a global BroadcastChannel, and providers in one process would otherwise
 * sync with each other without going through the server.
 */
export const connect = (serverUrl, room, opts = {}) => {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(serverUrl, room, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    ...opts
  })
  providers.push(provider)
  return { doc, provider }
}

/** Poll `cond` every 20 ms; reject after `timeoutMs` if given (else rely on the overall timeout). */
export const waitFor = (cond, what, timeoutMs = Infinity) => new Promise((resolve, reject) => {
  const start = Date.now()
  const tick = () => {
    let ok = false
    try { ok = cond() } catch (e) { return reject(e) }
    if (ok) return resolve()
    if (Date.now() - start > timeoutMs) return reject(new Error(`not within ${timeoutMs} ms: ${what}`))
    setTimeout(tick, 20)
  }
  tick()
})

export const waitSynced = (...ps) => waitFor(() => ps.every(p => p.synced), 'providers synced')

export const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms))

const shutdown = (code) => {
  for (const p of providers) {
    try { p.destroy(); p.doc.destroy() } catch {}
  }
  // give the close frames a moment to leave, then exit no matter what is pending
  setTimeout(() => process.exit(code), 100)
}

/** Run the scenario: exit 0 if it resolves, 1 (with the reason) if it throws. */
export const run = (main) => {
  main().then(
    () => { log('PASS'); shutdown(0) },
    (err) => { log(`FAIL: ${err && err.message ? err.message : err}`); printDiagnostics(); shutdown(1) }
  )
}

export const assert = (cond, msg) => {
  if (!cond) throw new Error(msg)
}
