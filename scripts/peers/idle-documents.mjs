// Memory of idle documents multiplexed on shared sockets, with the stock @hocuspocus/provider
// 4.8.0: SOCKETS sockets, each carrying DOCUMENTS_PER_SOCKET documents of different rooms out
// of ROOMS, against any Hocuspocus server (ycord's root URL, @hocuspocus/server). Samples the
// server's RSS (/proc/<pid>/status) before, with the sockets open, with one document per room
// (the rooms loaded) and with every document open, and prints one JSON object with the KiB per
// socket, per room and per document opened on an open socket after the rooms were loaded.
//
//   node scripts/peers/idle-documents.mjs <url> <server-pid> [sockets=200] [documents-per-socket=10] [rooms=200]
//
// The load tool's `idle` opens one socket per document; this is the other case, a Tiptap
// application with several documents open (what the provider's shared socket is for).
import * as Y from "yjs";
import WebSocket from "ws";
import { readFileSync } from "node:fs";
import {
  HocuspocusProvider,
  HocuspocusProviderWebsocket,
} from "@hocuspocus/provider";

const [url, pid, sockets = "200", perSocket = "10", rooms = "200"] =
  process.argv.slice(2);
if (!url || !pid) {
  console.error(
    "usage: node idle-documents.mjs <url> <server-pid> [sockets] [documents-per-socket] [rooms]",
  );
  process.exit(2);
}
const socketCount = Number(sockets);
const documentsPerSocket = Number(perSocket);
const roomCount = Number(rooms);
const total = socketCount * documentsPerSocket;
if (total < roomCount) {
  console.error("need at least as many documents as rooms");
  process.exit(2);
}
const prefix = `idle-docs-${process.pid}-${Date.now()}`;
const settleMs = 2000;
const timeout = setTimeout(() => {
  console.error("idle-documents: timed out");
  process.exit(1);
}, 120_000);

const rssKb = () => {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

await sleep(settleMs);
const before = rssKb();
const websockets = Array.from(
  { length: socketCount },
  () => new HocuspocusProviderWebsocket({ url, WebSocketPolyfill: WebSocket }),
);
const providers = [];

/** The socket of document `i`, in room `i % rooms`: no socket has a room twice. */
const socketOf = (i) => ((i % roomCount) + Math.floor(i / roomCount)) % socketCount;

/** Opens documents `from..to`. */
const open = async (from, to) => {
  const synced = [];
  for (let i = from; i < to; i++) {
    const provider = new HocuspocusProvider({
      websocketProvider: websockets[socketOf(i)],
      name: `${prefix}-${i % roomCount}`,
      document: new Y.Doc(),
      token: "",
    });
    provider.attach();
    providers.push(provider);
    synced.push(
      new Promise((resolve) => {
        if (provider.synced) resolve();
        else provider.on("synced", resolve);
      }),
    );
  }
  await Promise.all(synced);
};

await sleep(settleMs);
const socketsOpen = rssKb();
await open(0, roomCount);
await sleep(settleMs);
const roomsLoaded = rssKb();
await open(roomCount, total);
await sleep(settleMs);
const allOpen = rssKb();
const closedBy = websockets.filter((ws) => ws.status !== "connected").length;

console.log(
  JSON.stringify({
    url,
    sockets: socketCount,
    documents: total,
    rooms: roomCount,
    rss_before_kb: before,
    rss_sockets_open_kb: socketsOpen,
    rss_rooms_loaded_kb: roomsLoaded,
    rss_all_open_kb: allOpen,
    kb_per_socket: (socketsOpen - before) / socketCount,
    kb_per_room: (roomsLoaded - socketsOpen) / roomCount,
    kb_per_document: (allOpen - roomsLoaded) / (total - roomCount),
    sockets_not_connected: closedBy,
  }),
);
clearTimeout(timeout);
for (const provider of providers) provider.destroy();
for (const ws of websockets) ws.destroy();
process.exit(0);
