//! The cost floor of ycord's server architecture, for `BENCHMARKS.md`: a WebSocket relay that
//! does everything the `edit` scenario needs from a server except the document.
//!
//! Like ycord it runs one tokio task per connection on tokio-tungstenite, and a room's members
//! receive each update through a bounded queue that their own task drains to their socket, the
//! sender included (the echo). Unlike ycord it keeps no document and no log: it answers every
//! SyncStep1 with an empty SyncStep2 and forwards each Update frame as it came. The load tool
//! cannot tell the difference for `edit`, whose clients join empty rooms, so the server CPU per
//! delivered update it reports here is what the sockets, the tasks and the runtime cost by
//! themselves on this machine: the part of ycord's figure no change to ycord's own code can
//! remove.
//!
//! ```sh
//! cargo run --release -p ycord-tools --example relay_floor -- 127.0.0.1:18090 &
//! target/release/ycord-bench edit --url ws://127.0.0.1:18090 --rooms 20 --clients 5 \
//!   --hz 10 --seconds 20 --server-pid $!
//! ```
//!
//! Not a server to deploy: no persistence, no limits, no authentication.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// y-websocket: Sync message, SyncStep2 of an empty update.
const EMPTY_SYNC_STEP2: &[u8] = &[0, 1, 2, 0, 0];
/// y-websocket: Sync message, SyncStep1 of an empty state vector.
const EMPTY_SYNC_STEP1: &[u8] = &[0, 0, 1, 0];
/// Frames a member may have waiting, as ycord's update queue.
const QUEUE: usize = 1024;

type Members = Vec<(u64, mpsc::Sender<Bytes>)>;
type Rooms = Arc<Mutex<HashMap<String, Members>>>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18090".into());
    let listener = TcpListener::bind(&listen).await?;
    eprintln!("relay_floor listening on {listen}");
    let rooms = Rooms::default();
    let mut next_id = 0;
    loop {
        let (stream, _) = listener.accept().await?;
        next_id += 1;
        tokio::spawn(serve(stream, next_id, rooms.clone()));
    }
}

async fn serve(stream: TcpStream, id: u64, rooms: Rooms) {
    let _ = stream.set_nodelay(true);
    let mut path = String::new();
    let callback = |request: &Request, response: Response| {
        path = request.uri().path().to_owned();
        Ok(response)
    };
    let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let (sender, mut queue) = mpsc::channel(QUEUE);
    lock(&rooms)
        .entry(path.clone())
        .or_default()
        .push((id, sender));
    if socket
        .send(Message::Binary(Bytes::from_static(EMPTY_SYNC_STEP1)))
        .await
        .is_ok()
    {
        loop {
            tokio::select! {
                inbound = socket.next() => {
                    let Some(Ok(Message::Binary(frame))) = inbound else { break };
                    match frame.get(..2) {
                        Some([0, 0]) => {
                            let reply = Bytes::from_static(EMPTY_SYNC_STEP2);
                            if socket.send(Message::Binary(reply)).await.is_err() {
                                break;
                            }
                        }
                        Some([0, 2]) => {
                            for (_, member) in lock(&rooms).get(&path).into_iter().flatten() {
                                let _ = member.try_send(frame.clone());
                            }
                        }
                        _ => {}
                    }
                }
                Some(frame) = queue.recv() => {
                    if socket.send(Message::Binary(frame)).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    if let Some(members) = lock(&rooms).get_mut(&path) {
        members.retain(|(member, _)| *member != id);
    }
}

fn lock(rooms: &Rooms) -> std::sync::MutexGuard<'_, HashMap<String, Members>> {
    rooms
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
