//! `ycord-bench`: the load tool. Drives any y-websocket server (ycord, the reference
//! `@y/websocket-server`, ...) or a Hocuspocus server with real yrs clients over real
//! WebSockets and reports throughput, latency, delivery, and the server's CPU and memory.
//!
//! One module per concept: [`target`] (URL, rooms, timeouts, the server process),
//! [`latency`], [`procfs`], [`progress`], [`report`], [`random`], and one module per subcommand
//! ([`edit`], [`replay`], [`idle`], [`storm`]). The client keeping a document in sync
//! ([`client`]), its framing ([`wire`]) and its errors ([`error`]) are `ycord_tools`' library.

mod edit;
mod idle;
mod latency;
mod procfs;
mod progress;
mod random;
mod replay;
mod report;
mod storm;
mod target;

// The client, its wire formats and its errors are the library's, shared with the server's tests.
use ycord_tools::{client, error, wire};

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Load tool for y-websocket servers (ycord, @y/websocket-server, any compatible server) and
/// Hocuspocus servers (--protocol hocuspocus).
///
/// Every client is a yrs document synced over a real WebSocket, speaking the y-websocket
/// protocol like the stock WebsocketProvider (SyncStep1 on open, SyncStep2 in answer to the
/// server's, Update messages; reconnect and resync when the server closes it). A room is the
/// base URL + "/" + room name; each run uses fresh rooms named "<room-prefix>-<n>". With
/// --protocol hocuspocus, each client opens its own socket to the base URL, prefixes every
/// message with the room (document) name, and authenticates with an empty token before
/// syncing, like the stock HocuspocusProvider.
#[derive(Debug, Parser)]
#[command(
    name = "ycord-bench",
    version,
    after_help = "Results: a human summary on stdout, or one JSON object with --json; progress lines on stderr \
about once a second (--quiet to silence).\n\
Exit codes: 0 every check passed; 1 a check failed (results still printed) or the run broke off; \
2 bad arguments; 3 the target is unreachable or does not speak the protocol (the message names the URL).\n\
Figures from the same machine as the server include the load tool's own CPU use (reported as load tool CPU).\n\n\
Example: ycord --listen 127.0.0.1:8080 & ycord-bench edit --url ws://127.0.0.1:8080 --server-pid $!"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Steady typing: R rooms × C clients each inserting one character at H Hz; reports
    /// delivered/expected edits, send-to-receipt latency at the other clients, and server CPU
    /// per delivered update.
    ///
    /// Every client has its own Yjs client ID, so its k-th edit is the item with clock k; the
    /// sender stores when it sent clock k, and a receiver, after applying each frame, looks at
    /// its state vector to see which edits just became visible. Expected deliveries = edits
    /// sent × (C − 1); the sender's own echo is not counted. After the last edit the run waits
    /// up to --grace seconds for deliveries in flight (less once everyone has everything).
    /// Clients the server closes reconnect and resync like y-websocket; such closes are
    /// reported. Fails (exit 1) if any delivery is missing.
    Edit(edit::EditArgs),
    /// Throughput: one writer replays a real editing trace (one Update message per
    /// transaction, pipelined) while K readers in the room must end with the trace's text;
    /// reports updates/s until the last reader has everything.
    ///
    /// The writer never waits for echoes; the socket's backpressure alone bounds what is in
    /// flight. Readers join before the writer starts; a reader is complete when its state
    /// vector covers the whole trace, and its text must then equal the trace's text. Readers
    /// the server closes (e.g. 1013 "fell behind") reconnect and resync like y-websocket; every
    /// such close is counted in the report. Fails (exit 1) if a reader's text differs or it is
    /// incomplete at --timeout.
    Replay(replay::ReplayArgs),
    /// Memory: N idle connections over M rooms; samples the server's RSS before, with the
    /// rooms loaded, and with every connection open; reports KiB per room and per connection.
    ///
    /// Phase 1 opens one connection per room and makes one small edit in it (awaiting the
    /// echo), phase 2 opens the other N − M connections round-robin over the rooms. Per room =
    /// (RSS after phase 1 − RSS before) / M; per connection = (RSS after phase 2 − RSS after
    /// phase 1) / (N − M). Memory figures need --server-pid. The connections are then held
    /// (answering pings) for --hold-secs and closed cleanly. This process's open-files soft
    /// limit is raised to its hard limit first. Fails if a connection cannot be opened or the
    /// server closes one while held.
    Idle(idle::IdleArgs),
    /// Join storm: a big document in one room, then J clients connecting at the same instant;
    /// reports the time until each holds the full text (p50/p99/max).
    ///
    /// A writer loads the trace's final document as one Update (encode_state_as_update_v1)
    /// and stays connected; once its echo is back, one client joins alone and must see the
    /// full text (the baseline). Then all joiners are released at once; each is timed from the
    /// release to its WebSocket upgrade, the server's SyncStep1, its SyncStep2 arriving, and
    /// synced (SyncStep2 applied, text equal to the trace's endContent). Fails if any joiner
    /// does not end with the full text.
    Storm(storm::StormArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Thousands of sockets need more than the usual soft limit of 1024 open files; `idle`
    // checks the result and explains when it is still too low.
    let _ = procfs::raise_open_files_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ycord-bench: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Edit(args) => finish("edit", edit::run(&args).await, &args.target),
        Command::Replay(args) => finish("replay", replay::run(&args).await, &args.target),
        Command::Idle(args) => finish("idle", idle::run(&args).await, &args.target),
        Command::Storm(args) => finish("storm", storm::run(&args).await, &args.target),
    }
}

fn finish<R: report::Report>(
    command: &str,
    result: Result<R, error::BenchError>,
    target: &target::TargetArgs,
) -> ExitCode {
    match result {
        Ok(report) => report::emit(command, target.protocol, &report, target.json),
        Err(error) => report::emit_error(command, &error, target.json),
    }
}
