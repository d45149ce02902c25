// Shared helpers for the Hocuspocus scenarios (hocuspocus_*.mjs): the stock npm
// `@hocuspocus/provider` client (HocuspocusProviderWebsocket + HocuspocusProvider, `ws` as the
// WebSocket implementation) against a server's ROOT url, with every event the provider emits
// recorded so that scenarios can wait on them and print them when they fail.
//
// Argument parsing, step logging, the hard overall timeout, waitFor, sleep and assert come from
// lib.mjs (the y-websocket scenarios' helpers); `run` here also tears down the Hocuspocus
// providers and sockets.
import { HocuspocusProvider, HocuspocusProviderWebsocket } from '@hocuspocus/provider'
import WebSocket from 'ws'
import { Y, log, step, init as libInit, setDiagnostics, waitFor, sleep, assert } from './lib.mjs'

export { Y, log, step, setDiagnostics, waitFor, sleep, assert }

const sockets = []
const clients = []
const cleanups = []

/**
 * Parse `<serverUrl> <room> [extra...]` and arm the hard overall timeout (30 s by default,
 * INTEROP_TIMEOUT_MS overrides it). `extra` names the extra arguments: each must be present
 * unless its name ends with `?`.
 */
export const init = (name, extra = [], timeoutMs = Number(process.env.INTEROP_TIMEOUT_MS) || 30000) => {
  const required = extra.filter((arg) => !arg.endsWith('?')).length
  const args = process.argv.slice(4)
  if (process.argv.length < 4 || args.length < required) {
    console.error(`usage: node ${name}.mjs <serverUrl> <room> ${extra.map((arg) => `<${arg}>`).join(' ')}`)
    process.exit(2)
  }
  const { serverUrl, room } = libInit(name, timeoutMs)
  return { serverUrl, room, args }
}

/** A HocuspocusProviderWebsocket (one WebSocket) on the server's root url. */
export const socket = (serverUrl, opts = {}) => {
  const ws = new HocuspocusProviderWebsocket({
    url: serverUrl,
    WebSocketPolyfill: WebSocket,
    ...opts
  })
  sockets.push(ws)
  return ws
}

/** Run `fn` when the scenario ends (before the providers are destroyed). */
export const onCleanup = (fn) => cleanups.push(fn)

/**
 * A HocuspocusProvider for document `name` on `ws` (a HocuspocusProviderWebsocket), with a
 * fresh Y.Doc, attached at once. Returns a client record:
 *   { label, name, doc, provider, ws, text(), events: {...}, ycord(type), relays() }
 * where events records what the provider emitted: synced (count), unsynced (every number of
 * 'unsyncedChanges'), authenticated (scopes), failed (authenticationFailed reasons), stateless
 * (raw payloads, in order), closes (CLOSE reasons / close events).
 */
export const connect = (ws, name, { label = name, token = null, ...opts } = {}) => {
  const doc = new Y.Doc()
  const events = { synced: 0, unsynced: [], authenticated: [], failed: [], stateless: [], closes: [] }
  const provider = new HocuspocusProvider({
    websocketProvider: ws,
    name,
    document: doc,
    token,
    onSynced: () => { events.synced += 1 },
    onUnsyncedChanges: ({ number }) => { events.unsynced.push(number) },
    onAuthenticated: ({ scope }) => { events.authenticated.push(scope) },
    onAuthenticationFailed: ({ reason }) => { events.failed.push(reason) },
    onStateless: ({ payload }) => { events.stateless.push(payload) },
    onClose: ({ event }) => { events.closes.push(event && (event.reason ?? event.code)) },
    ...opts
  })
  // A provider on a shared websocketProvider is not attached by its constructor.
  provider.attach()
  const client = {
    label,
    name,
    doc,
    provider,
    ws,
    destroyed: false,
    text: (field = 'text') => doc.getText(field).toString(),
    /** Parsed stateless payloads that are ycord events (top-level "ycord" key), optionally of one type. */
    ycord: (type) => parsedStateless(events).filter((m) => m && m.ycord !== undefined && (type === undefined || m.ycord === type)),
    /** The relay envelopes received ({"ycord":"relay",...}). */
    relays: () => parsedStateless(events).filter((m) => m && m.ycord === 'relay'),
    events
  }
  clients.push(client)
  return client
}

const parsedStateless = (events) => events.stateless.map((payload) => {
  try { return JSON.parse(payload) } catch { return { unparsed: payload } }
})

/** Destroy a client's provider the stock way (it sends its awareness removal and CLOSE). */
export const destroy = (client) => {
  client.destroyed = true
  client.provider.destroy()
}

/** Wait until every client fired 'synced' at least `times` times. */
export const waitSynced = (cs, times = 1) =>
  waitFor(() => cs.every((c) => c.events.synced >= times && c.provider.isSynced),
    `synced: ${cs.filter((c) => !(c.events.synced >= times && c.provider.isSynced)).map((c) => c.label).join(', ')}`)

/**
 * Wait until every client has no unsynced change left: its unsyncedChanges counter is 0 and
 * the last 'unsyncedChanges' event it emitted said 0 (hasUnsyncedChanges false).
 */
export const waitAllSaved = (cs) =>
  waitFor(() => cs.every(saved), `unsynced changes at 0: ${cs.filter((c) => !saved(c)).map((c) => `${c.label}=${c.provider.unsyncedChanges}`).join(', ')}`)

const saved = (c) => !c.provider.hasUnsyncedChanges && c.events.unsynced.length > 0 && c.events.unsynced[c.events.unsynced.length - 1] === 0

/** Wait for the first ycord event of `type` on `client` matching `pred`; returns it. */
export const waitEvent = async (client, type, pred = () => true, what = `${client.label} receives a ycord "${type}" event`) => {
  let found
  await waitFor(() => (found = client.ycord(type).find(pred)) !== undefined, what)
  return found
}

/** Deep equality for plain JSON values. */
export const jsonEqual = (a, b) => JSON.stringify(canonical(a)) === JSON.stringify(canonical(b))
const canonical = (v) => Array.isArray(v)
  ? v.map(canonical)
  : v && typeof v === 'object'
    ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, canonical(v[k])]))
    : v

/** One line per client: label, sync state, counters, text (shortened) and stateless payloads. */
export const describe = (cs = clients) => cs.map((c) => {
  const t = c.text()
  const shown = t.length > 120 ? `${JSON.stringify(t.slice(0, 60))}...(${t.length} chars)` : JSON.stringify(t)
  return `\n  ${c.label} [${c.name}]: destroyed=${c.destroyed} synced=${c.provider.isSynced}(${c.events.synced}x) ` +
    `authenticated=${JSON.stringify(c.events.authenticated)} failed=${JSON.stringify(c.events.failed)} ` +
    `unsynced=${c.provider.unsyncedChanges} (events ${JSON.stringify(c.events.unsynced.slice(-8))}) ` +
    `ws=${c.ws.status} text=${shown} stateless=${JSON.stringify(c.events.stateless.slice(-10))}`
}).join('')

const shutdown = (code) => {
  for (const fn of cleanups) {
    try { fn() } catch {}
  }
  for (const c of clients) {
    if (!c.destroyed) {
      try { c.provider.destroy() } catch {}
    }
  }
  for (const ws of sockets) {
    try { ws.destroy() } catch {}
  }
  // Give the close frames a moment to leave, then exit no matter what is pending.
  setTimeout(() => process.exit(code), 100)
}

/** Run the scenario: exit 0 if it resolves, 1 (with the reason and the state seen) if it throws. */
export const run = (main) => {
  setDiagnostics(() => describe())
  main().then(
    () => { log('PASS'); shutdown(0) },
    (err) => {
      log(`FAIL: ${err && err.message ? err.message : err}`)
      try { log(`state: ${describe()}`) } catch (e) { log(`state: (diagnostics failed: ${e})`) }
      shutdown(1)
    }
  )
}
