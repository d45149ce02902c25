//! Test helpers: a real ycord server on port 0 with its data in a temporary directory, and a
//! y-websocket client over a real WebSocket: the load tool's shared client (`ycord_tools`) for
//! connecting, framing and decoding, with a background reader that records what the server sent.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
pub mod nextcloud;
pub mod node;

use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use ycord::protocol::{self, Inbound};
use ycord::{ServeConfig, Server};
use ycord_tools::client::{ClientOptions, Socket, apply_update};
use ycord_tools::wire::{Endpoint, Event};
use yrs::sync::Awareness;
use yrs::sync::awareness::AwarenessUpdate;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Transact, TransactionMut, Update};

/// How long any wait in a test may last before it fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// A server running in this process, stopped when dropped.
pub struct TestServer {
    pub server: Option<Server>,
    pub config: ServeConfig,
    /// Keeps the data directory alive for the server's (and restarts') lifetime.
    pub dir: Arc<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut ServeConfig)) -> TestServer {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut config = ServeConfig::for_tests(dir.path().join("data"));
        adjust(&mut config);
        Self::start_in(dir, config).await
    }

    /// Starts a server on the store `make_store` builds for the config (for instance a
    /// `FailingStore` over the sled store in its data directory). Restarts open the data
    /// directory as usual: drop every other handle to the store before one.
    pub async fn start_with_store(
        adjust: impl FnOnce(&mut ServeConfig),
        make_store: impl FnOnce(&ServeConfig) -> Arc<dyn ycord::store::RoomStore>,
    ) -> TestServer {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut config = ServeConfig::for_tests(dir.path().join("data"));
        adjust(&mut config);
        let store = make_store(&config);
        let server = Server::start_with_store(config.clone(), store)
            .await
            .expect("server starts");
        TestServer {
            server: Some(server),
            config,
            dir,
        }
    }

    pub async fn start_in(dir: Arc<tempfile::TempDir>, config: ServeConfig) -> TestServer {
        let server = start_server(config.clone()).await;
        TestServer {
            server: Some(server),
            config,
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr())
    }

    pub fn room_url(&self, room: &str) -> String {
        format!("{}/{}", self.url(), room)
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    /// Graceful shutdown, waiting until everything is on disk.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
            server.wait().await.expect("clean shutdown");
        }
    }

    /// Stops the server and starts a new one on the same address and data directory.
    pub async fn restart(&mut self) {
        let addr = self.addr();
        self.stop().await;
        let mut config = self.config.clone();
        config.listen = addr;
        let server = start_server(config).await;
        self.server = Some(server);
    }
}

/// Starts a server, retrying while its data directory is still locked by a server of this
/// process that just stopped: sled releases its lock when its background I/O jobs finish, which
/// can be a few milliseconds after `Server::wait` returned.
async fn start_server(config: ServeConfig) -> Server {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match Server::start(config.clone()).await {
            Ok(server) => return server,
            Err(ycord::server::ServerError::OpenStore { .. })
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(error) => panic!("server does not start: {error}"),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.shutdown();
        }
    }
}

/// What the client's reader saw.
#[derive(Default)]
pub struct Seen {
    /// Every binary frame, in order.
    pub frames: Vec<Vec<u8>>,
    /// The close frame the server sent, if any.
    pub close: Option<(u16, String)>,
    /// Set when the socket ended (closed, reset).
    pub ended: bool,
    /// Whether a SyncStep2 arrived.
    pub synced: bool,
}

/// A y-websocket client: a yrs document kept in sync with a room.
pub struct Client {
    /// The room, as the shared client frames its messages.
    endpoint: Endpoint,
    pub doc: Doc,
    pub awareness: Arc<Mutex<Awareness>>,
    sink: tokio::sync::Mutex<SplitSink<Socket, Message>>,
    pub seen: Arc<Mutex<Seen>>,
    reader: JoinHandle<()>,
}

impl Client {
    /// Connects and completes the sync handshake (SyncStep1 sent, SyncStep2 received).
    pub async fn connect(server: &TestServer, room: &str) -> Client {
        Self::connect_with_doc(&server.room_url(room), Doc::new()).await
    }

    /// Connects with an existing document (offline edits are pushed as SyncStep2 on connect).
    pub async fn connect_with_doc(url: &str, doc: Doc) -> Client {
        let client = Self::connect_raw(url, doc).await;
        client.send_sync_step1().await;
        client.wait_until(|seen, _| seen.synced).await;
        client
    }

    /// Connects without sending anything.
    pub async fn connect_raw(url: &str, doc: Doc) -> Client {
        let options = ClientOptions {
            connect_timeout: WAIT,
            sync_timeout: WAIT,
            small_buffers: false,
        };
        let socket = ycord_tools::client::connect(url, &options)
            .await
            .expect("connect");
        Self::over(socket, url, doc)
    }

    /// Connects with extra request headers (AppAPI's, as HaRP adds them) and completes the
    /// sync handshake; the upgrade's HTTP status when it is refused.
    pub async fn connect_with_headers(url: &str, headers: &http::HeaderMap) -> Result<Client, u16> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().extend(headers.clone());
        match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("the upgrade answered in time")
        {
            Ok((socket, _)) => {
                let client = Self::over(socket, url, Doc::new());
                client.send_sync_step1().await;
                client.wait_until(|seen, _| seen.synced).await;
                Ok(client)
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(error) => panic!("upgrade failed: {error}"),
        }
    }

    /// A client over an open socket to `url`'s room.
    fn over(socket: Socket, url: &str, doc: Doc) -> Client {
        let endpoint = Endpoint::y_websocket(url);
        let (sink, stream) = socket.split();
        let awareness = Arc::new(Mutex::new(Awareness::new(Doc::new())));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let reader = tokio::spawn(read_loop(
            stream,
            endpoint.clone(),
            doc.clone(),
            awareness.clone(),
            seen.clone(),
        ));
        Client {
            endpoint,
            doc,
            awareness,
            sink: tokio::sync::Mutex::new(sink),
            seen,
            reader,
        }
    }

    pub async fn send_sync_step1(&self) {
        let state_vector = self.doc.transact().state_vector().encode_v1();
        for message in self.endpoint.opening(&state_vector) {
            self.send_raw(message.to_vec()).await;
        }
        // SyncStep2 carrying our state, for offline edits; the server's own SyncStep1 would
        // ask for it too, but answering up front keeps the helper simple.
        let update = self
            .doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        self.send_raw(self.endpoint.sync_step2(&update).to_vec())
            .await;
    }

    /// Sends one binary frame as is.
    pub async fn send_raw(&self, frame: Vec<u8>) {
        let _ = self.sink.lock().await.send(Message::binary(frame)).await;
    }

    pub async fn send_message(&self, message: Message) {
        let _ = self.sink.lock().await.send(message).await;
    }

    /// Makes a local edit and sends it to the server as an Update message.
    pub async fn edit(&self, change: impl FnOnce(&mut TransactionMut)) {
        let update = {
            let mut txn = self.doc.transact_mut();
            change(&mut txn);
            txn.encode_update_v1()
        };
        self.send_raw(self.endpoint.update(&update).to_vec()).await;
    }

    /// Sets this client's awareness state and sends it.
    pub async fn set_awareness(&self, client_id: u64, clock: u32, json: &str) {
        let mut payload = Vec::new();
        use yrs::encoding::write::Write;
        payload.write_var(1u32);
        payload.write_var(client_id);
        payload.write_var(clock);
        payload.write_string(json);
        self.send_raw(protocol::encode_awareness(&payload).to_vec())
            .await;
    }

    /// Waits until `condition` holds over what was seen and the document.
    pub async fn wait_until(&self, condition: impl Fn(&Seen, &Doc) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if condition(&self.seen.lock().unwrap(), &self.doc) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not met within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the server closes the socket and returns its close code.
    pub async fn wait_closed(&self) -> Option<(u16, String)> {
        self.wait_until(|seen, _| seen.ended).await;
        self.seen.lock().unwrap().close.clone()
    }

    /// The awareness JSON state the client knows for `client_id`, if present.
    pub fn awareness_state(&self, client_id: u64) -> Option<String> {
        let awareness = self.awareness.lock().unwrap();
        awareness
            .iter()
            .find(|(id, _)| id.get() == client_id)
            .and_then(|(_, state)| state.data.map(|data| data.to_string()))
    }

    pub async fn close(self) {
        let _ = self.sink.lock().await.close().await;
        self.reader.abort();
    }

    /// Drops the TCP connection without a close frame.
    pub fn drop_abruptly(self) {
        self.reader.abort();
        drop(self.sink);
    }
}

async fn read_loop(
    mut stream: SplitStream<Socket>,
    endpoint: Endpoint,
    doc: Doc,
    awareness: Arc<Mutex<Awareness>>,
    seen: Arc<Mutex<Seen>>,
) {
    while let Some(message) = stream.next().await {
        let Ok(message) = message else { break };
        match message {
            Message::Binary(frame) => {
                let events = endpoint
                    .decode(&frame)
                    .expect("server sends well-formed messages");
                for event in events {
                    match event {
                        Event::SyncStep2(update) => {
                            apply_update(&doc, update).expect("valid update");
                            seen.lock().unwrap().synced = true;
                        }
                        Event::Update(update) => apply_update(&doc, update).expect("valid update"),
                        Event::Awareness(payload) => {
                            let update = AwarenessUpdate::decode_v1(payload).expect("awareness");
                            awareness
                                .lock()
                                .unwrap()
                                .apply_update(update)
                                .expect("applies");
                        }
                        _ => {}
                    }
                }
                seen.lock().unwrap().frames.push(frame.to_vec());
            }
            Message::Close(frame) => {
                seen.lock().unwrap().close =
                    frame.map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string()));
            }
            _ => {}
        }
    }
    seen.lock().unwrap().ended = true;
}

/// The text of the root `name` in `doc`.
pub fn text(doc: &Doc, name: &str) -> String {
    use yrs::GetString;
    let text = doc.get_or_insert_text(name);
    text.get_string(&doc.transact())
}

// ---------------------------------------------------------------------------------------------
// Additional helpers for the themed test files (awareness, rooms, persistence, bad input, ...).
// ---------------------------------------------------------------------------------------------

impl TestServer {
    /// The address the server listens on (TCP).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server().local_addr().expect("a TCP listener")
    }
}

impl Client {
    /// Waits until `condition` holds over the whole client, failing with `what` otherwise.
    pub async fn wait_for(&self, what: &str, condition: impl Fn(&Client) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if condition(self) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the text `name` of this client's document equals `expected`.
    pub async fn wait_text(&self, name: &str, expected: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let current = text(&self.doc, name);
            if current == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "text {name:?} never became the expected {} chars; it is {} chars: {:?}",
                expected.chars().count(),
                current.chars().count(),
                preview(&current)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the awareness state this client knows for `client_id` is `expected`
    /// (`None`: absent or removed).
    pub async fn wait_awareness(&self, client_id: u64, expected: Option<&str>) {
        let what = format!("awareness of client {client_id} to become {expected:?}");
        self.wait_for(&what, |client| {
            client.awareness_state(client_id).as_deref() == expected
        })
        .await;
    }

    /// Appends `addition` to the text `name` and sends the update.
    pub async fn append_text(&self, name: &str, addition: &str) {
        use yrs::Text;
        let text_ref = self.doc.get_or_insert_text(name);
        self.edit(|txn| {
            let len = text_ref.len(txn);
            text_ref.insert(txn, len, addition);
        })
        .await;
    }

    /// Every binary frame received so far.
    pub fn frames(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().frames.clone()
    }

    /// How many binary frames were received so far.
    pub fn frame_count(&self) -> usize {
        self.seen.lock().unwrap().frames.len()
    }

    /// Whether the socket has ended.
    pub fn ended(&self) -> bool {
        self.seen.lock().unwrap().ended
    }

    /// The state vector of this client's document.
    pub fn state_vector(&self) -> StateVector {
        self.doc.transact().state_vector()
    }
}

/// Connects a fresh client (empty document) to a full room URL and completes the handshake.
pub async fn connect_url(url: &str) -> Client {
    Client::connect_with_doc(url, Doc::new()).await
}

/// The first characters of a long string, for assertion messages.
pub fn preview(text: &str) -> String {
    let head: String = text.chars().take(80).collect();
    if head.len() < text.len() {
        format!("{head}…")
    } else {
        head
    }
}

/// Asserts that every frame the client received holds exactly one well-formed message
/// (`shared/PROTOCOL.md` 2.7: older clients read only the first message of a frame).
pub fn assert_one_message_per_frame(client: &Client) {
    for (index, frame) in client.frames().iter().enumerate() {
        let messages: Vec<_> = protocol::decode_frame(frame).collect();
        assert_eq!(
            messages.len(),
            1,
            "frame {index} ({} bytes, starting {:?}) holds {} messages",
            frame.len(),
            &frame[..frame.len().min(8)],
            messages.len()
        );
        assert!(
            messages[0].is_ok(),
            "frame {index} is malformed: {:?}",
            messages[0]
        );
    }
}

/// The entries of an awareness frame: client ID → (clock, JSON). `None` for other frames.
pub fn awareness_entries(frame: &[u8]) -> Option<std::collections::HashMap<u64, (u32, String)>> {
    let mut messages = protocol::decode_frame(frame);
    match messages.next()? {
        Ok(Inbound::Awareness(payload)) => {
            let update = AwarenessUpdate::decode_v1(payload).expect("awareness payload");
            Some(
                update
                    .clients
                    .into_iter()
                    .map(|(id, entry)| (id.get(), (entry.clock, entry.json.to_string())))
                    .collect(),
            )
        }
        _ => None,
    }
}

/// The text `name` of a document rebuilt from what the store holds for `room` (snapshot, then
/// log in order), as the server would load it.
pub fn stored_text(store: &ycord::store::SledStore, room: &str, name: &str) -> String {
    use ycord::store::RoomStore;
    let stored = store.load(room).expect("store loads");
    assert!(
        stored.corrupt.is_empty(),
        "corrupt records in {room}: {:?}",
        stored.corrupt
    );
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        for bytes in stored.snapshot.iter().chain(stored.log.iter()) {
            let update = Update::decode_v1(bytes).expect("stored update decodes");
            txn.apply_update(update).expect("stored update applies");
        }
    }
    text(&doc, name)
}

/// Opens the sled store of a stopped server. sled locks its directory until its last handle is
/// gone, which happens when the server's tasks have been dropped: retry until then.
pub async fn open_store(data_dir: &std::path::Path) -> ycord::store::SledStore {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match ycord::store::SledStore::open(data_dir) {
            Ok(store) => return store,
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "store in {} does not open: {error}",
                    data_dir.display()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// An HTTP client for the tests' calls, each bounded by [`WAIT`].
pub fn http() -> reqwest::Client {
    // reqwest is built without a default TLS provider; even plain HTTP needs one installed.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

/// Sends `request`; its status and body.
pub async fn call(request: reqwest::RequestBuilder) -> (reqwest::StatusCode, String) {
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.text().await.unwrap())
}

/// Sends `request`; its status and body, which must be JSON.
pub async fn call_json(
    request: reqwest::RequestBuilder,
) -> (reqwest::StatusCode, serde_json::Value) {
    let (status, body) = call(request).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    (status, json)
}

/// `GET url`: its status and body.
pub async fn get(url: &str) -> (reqwest::StatusCode, String) {
    call(http().get(url)).await
}

/// `GET url`: its status and JSON body.
pub async fn get_json(url: &str) -> (reqwest::StatusCode, serde_json::Value) {
    call_json(http().get(url)).await
}

impl TestServer {
    /// `http://ADDR<path>` (path with its leading slash).
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }
}

/// Reads a raw WebSocket to its end, for at most [`WAIT`]: the binary frames and bytes that
/// came, and the close frame's code and reason (none if it ended without one, or not in time).
pub async fn read_to_end<S>(mut socket: S) -> (usize, usize, Option<(u16, String)>)
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let (mut frames, mut bytes, mut close) = (0, 0, None);
    let _ = tokio::time::timeout(WAIT, async {
        while let Some(Ok(message)) = socket.next().await {
            match message {
                Message::Binary(frame) => {
                    frames += 1;
                    bytes += frame.len();
                }
                Message::Close(frame) => {
                    close = frame.map(|frame| (u16::from(frame.code), frame.reason.to_string()))
                }
                _ => {}
            }
        }
    })
    .await;
    (frames, bytes, close)
}

/// The value of the metric line `name` (with its labels, if any) in Prometheus text.
pub fn metric_in(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
            .map(|value| value.trim().parse::<f64>().unwrap())
    })
}

impl TestServer {
    /// The value of the metric line `name` (with its labels, if any) in the server's metrics;
    /// 0 for a metric not rendered yet.
    pub fn metric(&self, name: &str) -> f64 {
        metric_in(&self.server().metrics().render(), name).unwrap_or(0.0)
    }
}

impl Client {
    /// Appends `content` to the text `text` and waits for the server's echo of the update.
    pub async fn append_and_wait_echo(&self, content: &str) {
        let before = self.frame_count();
        self.append_text("text", content).await;
        self.wait_until(|seen, _| seen.frames[before..].iter().any(|f| f.starts_with(&[0, 2])))
            .await;
    }
}

/// Seconds since the epoch, for token claims.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token with `claims`, signed with `secret`.
pub fn sign(secret: &str, claims: serde_json::Value) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A room name no other test (or earlier run on a reused data dir) uses.
pub fn unique_room(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
