//! Webhooks against a real HTTP receiver running in the test: a room's load, its (debounced)
//! changes and its unload are POSTed as JSON, signed with HMAC-SHA256 of the body; a continuous
//! stream of edits is still reported within the maximum delay; refused deliveries are retried.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, TestServer};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HOOK_SECRET: &str = "webhook-secret";

/// Longest a test waits for one webhook.
const HOOK_WAIT: Duration = Duration::from_secs(15);

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hook {
    path: String,
    /// Header names in lower case.
    headers: HashMap<String, String>,
    body: Vec<u8>,
    received: Instant,
}

impl Hook {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn event(&self) -> String {
        self.json()["event"].as_str().unwrap().to_owned()
    }
}

/// A minimal HTTP/1.1 server recording every request; it answers 500 to the first
/// `fail_first` requests and 200 to the rest.
struct Receiver {
    url: String,
    hooks: Arc<Mutex<Vec<Hook>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let hooks = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(AtomicUsize::new(0));
        let task = {
            let hooks = hooks.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    tokio::spawn(serve_connection(
                        stream,
                        hooks.clone(),
                        answered.clone(),
                        fail_first,
                    ));
                }
            })
        };
        Receiver { url, hooks, task }
    }

    fn hooks(&self) -> Vec<Hook> {
        self.hooks.lock().unwrap().clone()
    }

    /// Waits until a request matches `condition` and returns it.
    async fn wait_for(&self, what: &str, condition: impl Fn(&Hook) -> bool) -> Hook {
        let deadline = tokio::time::Instant::now() + HOOK_WAIT;
        loop {
            if let Some(hook) = self.hooks().into_iter().find(|hook| condition(hook)) {
                return hook;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no webhook {what} within {HOOK_WAIT:?}; received: {:?}",
                self.hooks()
                    .iter()
                    .map(|hook| String::from_utf8_lossy(&hook.body).into_owned())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_event(&self, room: &str, event: &str) -> Hook {
        self.wait_for(&format!("{event} for {room}"), |hook| {
            let json = hook.json();
            json["room"] == room && json["event"] == event
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves requests on one (keep-alive) connection.
async fn serve_connection(
    mut stream: TcpStream,
    hooks: Arc<Mutex<Vec<Hook>>>,
    answered: Arc<AtomicUsize>,
    fail_first: usize,
) {
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        // The head.
        let head_end = loop {
            if let Some(position) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break position + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let headers: HashMap<String, String> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        let length: usize = headers
            .get("content-length")
            .map_or(0, |value| value.parse().unwrap());
        // The body.
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        }
        let body = buffer[head_end..head_end + length].to_vec();
        buffer.drain(..head_end + length);
        hooks.lock().unwrap().push(Hook {
            path,
            headers,
            body,
            received: Instant::now(),
        });
        let status = if answered.fetch_add(1, Ordering::SeqCst) < fail_first {
            "500 Internal Server Error"
        } else {
            "200 OK"
        };
        let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body`, computed independently of the server's code.
fn expected_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn assert_signed(hook: &Hook) {
    let signature = hook
        .headers
        .get("x-ycord-signature-256")
        .unwrap_or_else(|| panic!("no signature header: {hook:?}"));
    assert_eq!(signature, &expected_signature(&hook.body), "{hook:?}");
    assert_eq!(hook.path, "/hook");
    assert!(
        hook.headers["content-type"].starts_with("application/json"),
        "{hook:?}"
    );
}

#[tokio::test]
async fn a_rooms_load_debounced_changes_and_unload_are_posted_signed() {
    let receiver = Receiver::start(0).await;
    let server = TestServer::start_with(|config| {
        config.webhook_url = Some(receiver.url.clone());
        config.webhook_secret = Some(HOOK_SECRET.into());
        config.room_idle_secs = 1;
    })
    .await;

    let client = Client::connect(&server, "file:text/1").await;
    let loaded = receiver.wait_event("file:text/1", "loaded").await;
    assert_signed(&loaded);
    assert!(loaded.json()["timestamp_ms"].as_u64().unwrap() > 0);

    // A burst of edits, each well within the 2 s quiet period of the one before.
    for index in 0..20 {
        client.append_and_wait_echo(&index.to_string()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last_edit = Instant::now();
    let changed = receiver.wait_event("file:text/1", "changed").await;
    assert_signed(&changed);
    assert!(changed.json()["last_change_ms"].as_u64().unwrap() > 0);
    // Debounced: sent only once the room had been quiet (a lower bound, never flaky).
    assert!(
        changed.received.duration_since(last_edit) >= Duration::from_millis(1500),
        "changed sent {:?} after the last edit",
        changed.received.duration_since(last_edit)
    );

    // Idle unload (room_idle_secs = 1) once the client leaves.
    client.close().await;
    let unloaded = receiver.wait_event("file:text/1", "unloaded").await;
    assert_signed(&unloaded);

    // Exactly one change event for the whole burst, in order between load and unload. A change
    // still pending would have been sent before the unload.
    let events: Vec<String> = receiver.hooks().iter().map(Hook::event).collect();
    assert_eq!(events, ["loaded", "changed", "unloaded"]);
    for hook in receiver.hooks() {
        assert_signed(&hook);
    }
}

#[tokio::test]
async fn continuous_editing_is_reported_within_the_maximum_delay() {
    let receiver = Receiver::start(0).await;
    let server = TestServer::start_with(|config| {
        config.webhook_url = Some(receiver.url.clone());
        config.webhook_secret = Some(HOOK_SECRET.into());
    })
    .await;
    let client = Client::connect(&server, "busy").await;
    receiver.wait_event("busy", "loaded").await;

    // Edit every 300 ms, never quiet for 2 s: the change must still be reported (at most 10 s
    // after the first unsent change) while the edits go on.
    let started = Instant::now();
    let mut edits = 0;
    while !receiver
        .hooks()
        .iter()
        .any(|hook| hook.event() == "changed")
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no change event after {edits} edits over {:?}",
            started.elapsed()
        );
        client.append_and_wait_echo("x").await;
        edits += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let changed = receiver.wait_event("busy", "changed").await;
    assert_signed(&changed);
    // Sent while edits were still arriving, i.e. not because the room went quiet.
    assert!(edits > 10, "only {edits} edits before the change event");
}

#[tokio::test]
async fn a_refused_delivery_is_retried_and_unsigned_without_a_secret() {
    let receiver = Receiver::start(1).await;
    let server = TestServer::start_with(|config| {
        config.webhook_url = Some(receiver.url.clone());
        config.webhook_secret = None;
    })
    .await;
    let _client = Client::connect(&server, "retry").await;
    let deadline = tokio::time::Instant::now() + HOOK_WAIT;
    while receiver.hooks().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retry: {:?}",
            receiver.hooks()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hooks = receiver.hooks();
    assert_eq!(
        hooks[0].body, hooks[1].body,
        "the retry resends the same event"
    );
    assert_eq!(hooks[0].event(), "loaded");
    assert!(
        !hooks[0].headers.contains_key("x-ycord-signature-256"),
        "signed without a secret: {:?}",
        hooks[0]
    );
}

#[tokio::test]
async fn webhook_deliveries_are_counted_in_the_metrics() {
    let receiver = Receiver::start(0).await;
    let server = TestServer::start_with(|config| {
        config.webhook_url = Some(receiver.url.clone());
    })
    .await;
    let _client = Client::connect(&server, "counted").await;
    receiver.wait_event("counted", "loaded").await;
    // `Metrics` has counters for webhook deliveries; they must be exported like the others.
    let deadline = tokio::time::Instant::now() + HOOK_WAIT;
    loop {
        let text = server.server().metrics().render();
        if text
            .lines()
            .any(|line| line == "ycord_webhooks_sent_total 1")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ycord_webhooks_sent_total is not 1 after a delivered webhook; metrics:\n{}",
            text.lines()
                .filter(|line| line.contains("webhook") || line.starts_with("# TYPE"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = server.server().metrics().render();
    assert!(text.contains("ycord_webhooks_failed_total 0"), "{text}");
    assert!(
        text.contains("ycord_webhook_events_dropped_total 0"),
        "{text}"
    );
}
