// Hocuspocus 4 for ycord-bench: the stock Server with the SQLite extension writing to a file,
// so that it persists like the other peers (ycord: sled, @y/websocket-server: YPERSISTENCE).
// Everything else is Hocuspocus's default configuration (no auth hooks: every token is
// accepted; onStoreDocument debounced 2 s, at most 10 s).
//
//   HOST=127.0.0.1 PORT=11235 DATABASE=/tmp/hp.sqlite node scripts/peers/hocuspocus-server.mjs
import { Server } from "@hocuspocus/server";
import { SQLite } from "@hocuspocus/extension-sqlite";

const host = process.env.HOST ?? "127.0.0.1";
const port = Number(process.env.PORT ?? 11235);
const database = process.env.DATABASE;
if (!database) {
  console.error("hocuspocus-server: set DATABASE to the SQLite file to persist to");
  process.exit(2);
}

const server = new Server({
  address: host,
  port,
  quiet: true,
  extensions: [new SQLite({ database })],
});

await server.listen();
console.log(`hocuspocus listening on ws://${host}:${port} (SQLite ${database})`);

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, async () => {
    await server.destroy();
    process.exit(0);
  });
}
