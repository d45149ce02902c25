//! TLS served directly (`--tls-cert`/`--tls-key`): a certificate generated at test time, two
//! wss:// clients that trust it syncing an edit, HTTPS health checks, and plain ws:// refused on
//! the TLS port.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestServer, WAIT};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use ycord::protocol::{self, Inbound};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, Text, Transact, Update};

/// A self-signed certificate for `localhost` and 127.0.0.1, in DER (to trust) and on disk as
/// PEM (for the server).
struct Certificate {
    der: rustls_pki_types::CertificateDer<'static>,
    dir: tempfile::TempDir,
}

impl Certificate {
    fn generate() -> Certificate {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("key.pem"),
            certified.signing_key.serialize_pem(),
        )
        .unwrap();
        Certificate {
            der: certified.cert.der().clone(),
            dir,
        }
    }

    async fn server(&self) -> TestServer {
        let cert = self.dir.path().join("cert.pem");
        let key = self.dir.path().join("key.pem");
        TestServer::start_with(|config| {
            config.tls_cert = Some(cert);
            config.tls_key = Some(key);
        })
        .await
    }

    /// A TLS connector that trusts this certificate only.
    fn connector(&self) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }

    async fn tls_stream(&self, addr: SocketAddr) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        tokio::time::timeout(WAIT, self.connector().connect(name, tcp))
            .await
            .expect("TLS handshake in time")
            .expect("TLS handshake")
    }
}

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// A minimal y-websocket client over wss: a yrs document kept in sync with a room.
struct WssClient {
    doc: Doc,
    sink: SplitSink<Wss, Message>,
    synced: Arc<Mutex<bool>>,
    reader: tokio::task::JoinHandle<()>,
}

impl WssClient {
    async fn connect(certificate: &Certificate, addr: SocketAddr, room: &str) -> WssClient {
        let stream = certificate.tls_stream(addr).await;
        let url = format!("wss://localhost:{}/{room}", addr.port());
        let (socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
            .await
            .expect("upgrade in time")
            .expect("upgrade over TLS");
        let (mut sink, mut stream) = socket.split();
        let doc = Doc::new();
        let synced = Arc::new(Mutex::new(false));
        let reader = {
            let doc = doc.clone();
            let synced = synced.clone();
            tokio::spawn(async move {
                while let Some(Ok(message)) = stream.next().await {
                    let Message::Binary(frame) = message else {
                        continue;
                    };
                    for inbound in protocol::decode_frame(&frame) {
                        match inbound.unwrap() {
                            Inbound::SyncStep2(update) | Inbound::Update(update) => {
                                let update = Update::decode_v1(update).unwrap();
                                doc.transact_mut().apply_update(update).unwrap();
                                if frame[1] == 1 {
                                    *synced.lock().unwrap() = true;
                                }
                            }
                            _ => {}
                        }
                    }
                }
            })
        };
        let state_vector = doc.transact().state_vector().encode_v1();
        sink.send(Message::binary(
            protocol::encode_sync_step1(&state_vector).to_vec(),
        ))
        .await
        .unwrap();
        let client = WssClient {
            doc,
            sink,
            synced,
            reader,
        };
        client
            .wait_until(|client| *client.synced.lock().unwrap())
            .await;
        client
    }

    fn text(&self) -> String {
        let text = self.doc.get_or_insert_text("text");
        text.get_string(&self.doc.transact())
    }

    async fn insert(&mut self, content: &str) {
        let text = self.doc.get_or_insert_text("text");
        let update = {
            let mut txn = self.doc.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, len, content);
            txn.encode_update_v1()
        };
        self.sink
            .send(Message::binary(protocol::encode_update(&update).to_vec()))
            .await
            .unwrap();
    }

    async fn wait_until(&self, condition: impl Fn(&WssClient) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !condition(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not within {WAIT:?}; text is {:?}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for WssClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[tokio::test]
async fn two_wss_clients_sync_an_edit() {
    let certificate = Certificate::generate();
    let server = certificate.server().await;
    let addr = server.addr();
    let mut alice = WssClient::connect(&certificate, addr, "file:text/1").await;
    let bob = WssClient::connect(&certificate, addr, "file:text/1").await;
    alice.insert("over tls").await;
    bob.wait_until(|client| client.text() == "over tls").await;
    // A late joiner gets the document in its handshake.
    let carol = WssClient::connect(&certificate, addr, "file:text/1").await;
    assert_eq!(carol.text(), "over tls");
}

#[tokio::test]
async fn health_checks_are_served_over_https() {
    let certificate = Certificate::generate();
    let server = certificate.server().await;
    let mut stream = certificate.tls_stream(server.addr()).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .ok();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#"{"status":"ok"}"#), "{response}");
}

#[tokio::test]
async fn plain_websockets_to_the_tls_port_fail() {
    let certificate = Certificate::generate();
    let server = certificate.server().await;
    let url = server.room_url("doc");
    let attempt = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .expect("the server answers (by closing) in time");
    assert!(attempt.is_err(), "plain ws:// was accepted on the TLS port");
    // The server is still fine for TLS clients, and no room was loaded by the attempt.
    let rendered = server.server().metrics().render();
    assert!(rendered.contains("ycord_rooms_loaded 0"), "{rendered}");
    let client = WssClient::connect(&certificate, server.addr(), "doc").await;
    assert_eq!(client.text(), "");
}
