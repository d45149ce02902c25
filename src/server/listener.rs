//! The accept loop: plain TCP or TLS, one hyper connection per socket, graceful shutdown.
//!
//! warp 0.4 serves plain TCP only and keeps the client address to itself, so ycord runs its
//! own loop around `warp::service`: it terminates TLS when configured, bounds the time a client
//! may take for the TLS handshake and the HTTP request head (a slowloris holds nothing for
//! long), and tags every request with the client's address for per-IP limits: the TCP peer, or
//! the address a trusted reverse proxy forwarded ([`client_ip`]).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use ipnet::IpNet;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use warp::Filter;

/// Longest a client may take for the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a client may take to send the head of an HTTP request (the WebSocket upgrade).
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to pause accepting after an error such as running out of file descriptors.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The client's address, attached to every request (read with `warp::ext::get`).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The client address of a request (`None` if it came without a [`ClientAddr`]): see
/// [`forwarded_client`].
pub fn client_ip(
    trusted_proxies: Arc<[IpNet]>,
) -> impl Filter<Extract = (Option<IpAddr>,), Error = Infallible> + Clone {
    warp::ext::optional::<ClientAddr>()
        .and(warp::header::headers_cloned())
        .map(move |peer: Option<ClientAddr>, headers: HeaderMap| {
            peer.map(|ClientAddr(peer)| forwarded_client(peer.ip(), &headers, &trusted_proxies))
        })
}

/// The address of the client behind `peer`. A peer that is not a trusted proxy is the client:
/// anyone can write forwarding headers. A trusted proxy appends the address it saw to
/// `Forwarded` (RFC 7239, its `for=` nodes; preferred when present) or `X-Forwarded-For`, so
/// the hops are read from the right, skipping trusted proxies; the first untrusted one is the
/// client. A hop that is not an IP address (`unknown`, an obfuscated name, garbage) ends the
/// walk at the last trusted address: what lies left of it cannot be relied on.
pub fn forwarded_client(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    let mut client = peer.to_canonical();
    if !trusted(&client) {
        return client;
    }
    let hops = if headers.contains_key(http::header::FORWARDED) {
        forwarded_for_nodes(headers)
    } else {
        x_forwarded_for_hops(headers)
    };
    for hop in hops.into_iter().rev() {
        match hop {
            Some(ip) if trusted(&client) => client = ip.to_canonical(),
            _ => break,
        }
    }
    client
}

/// The `for=` nodes of every `Forwarded` header, in order; `None` where a node is not an IP
/// address. Elements without `for=` name no hop.
fn forwarded_for_nodes(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let mut nodes = Vec::new();
    for value in headers.get_all(http::header::FORWARDED) {
        let Ok(value) = value.to_str() else {
            nodes.push(None);
            continue;
        };
        for element in value.split(',') {
            let node = element.split(';').find_map(|pair| {
                let (name, node) = pair.split_once('=')?;
                name.trim().eq_ignore_ascii_case("for").then_some(node)
            });
            if let Some(node) = node {
                nodes.push(parse_node(node.trim().trim_matches('"')));
            }
        }
    }
    nodes
}

/// The hops of every `X-Forwarded-For` header, in order; `None` where a hop is not an IP address.
fn x_forwarded_for_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        match value.to_str() {
            Ok(value) => hops.extend(value.split(',').map(|hop| parse_node(hop.trim()))),
            Err(_) => hops.push(None),
        }
    }
    hops
}

/// An address as proxies write it: `192.0.2.1`, `2001:db8::1`, with or without a port
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`, `[2001:db8::1]`).
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = node.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    node.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|ip| ip.parse::<std::net::Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

/// The upgrade of a WebSocket request, taken out of hyper before warp routes the request so
/// that ycord can build the WebSocket itself (warp's `ws()` hides tungstenite's buffer sizes,
/// and the default 128 KiB read buffer would be most of an idle connection's memory).
#[derive(Clone)]
pub struct PendingUpgrade(Arc<std::sync::Mutex<Option<hyper::upgrade::OnUpgrade>>>);

impl std::fmt::Debug for PendingUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingUpgrade")
    }
}

impl PendingUpgrade {
    /// The upgrade future; `None` if it was taken already.
    pub fn take(&self) -> Option<hyper::upgrade::OnUpgrade> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// Whether a request asks for a WebSocket (`Connection: upgrade`, `Upgrade: websocket`).
fn is_websocket_upgrade<B>(request: &http::Request<B>) -> bool {
    let header_has = |name: http::header::HeaderName, token: &str| {
        request.headers().get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|value| {
                value
                    .split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    header_has(http::header::CONNECTION, "upgrade")
        && header_has(http::header::UPGRADE, "websocket")
}

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("reading the certificate {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("reading the private key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] tokio_rustls::rustls::Error),
}

/// Builds a TLS acceptor from PEM files.
pub fn tls_acceptor(cert_path: &Path, key_path: &Path) -> Result<TlsAcceptor, TlsError> {
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|iter| iter.collect())
        .map_err(|error| TlsError::Certificate {
            path: cert_path.display().to_string(),
            reason: error.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::Certificate {
            path: cert_path.display().to_string(),
            reason: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|error| TlsError::Key {
        path: key_path.display().to_string(),
        reason: error.to_string(),
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certificates, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Where the server accepts connections: TCP, or a unix socket (ExApp mode behind HaRP,
/// whose `frpc` forwards to it).
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    /// Binds a unix socket at `path`, replacing a stale socket file a killed process left
    /// (refusing to replace anything that is not a socket).
    pub fn bind_unix(path: &Path) -> std::io::Result<Listener> {
        use std::os::unix::fs::FileTypeExt;
        match std::fs::symlink_metadata(path) {
            Ok(metadata) if metadata.file_type().is_socket() => std::fs::remove_file(path)?,
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists and is not a socket",
                ));
            }
            Err(_) => {}
        }
        tokio::net::UnixListener::bind(path).map(Listener::Unix)
    }
}

/// A listener [`accept_loop`] serves: its streams, and the client's address where it has one.
pub trait Accept: Send + 'static {
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn accept(
        &self,
    ) -> impl Future<Output = std::io::Result<(Self::Stream, Option<SocketAddr>)>> + Send;
}

impl Accept for TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<(Self::Stream, Option<SocketAddr>)> {
        let (stream, client) = TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, Some(client)))
    }
}

/// A unix client has no address: per-address limits skip it.
impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<(Self::Stream, Option<SocketAddr>)> {
        let (stream, _) = tokio::net::UnixListener::accept(self).await?;
        Ok((stream, None))
    }
}

/// Accepts connections until `shutdown`, serving each with `service`; then waits for the
/// open HTTP exchanges to finish (upgraded WebSockets are no longer HTTP and end on their own
/// shutdown path).
pub async fn accept_loop<L: Accept, S>(
    listener: L,
    tls: Option<TlsAcceptor>,
    service: S,
    shutdown: CancellationToken,
) where
    S: tower_service::Service<
            http::Request<hyper::body::Incoming>,
            Response = warp::reply::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, client) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let service = service.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut request: http::Request<_>| {
                if let Some(client) = client {
                    request.extensions_mut().insert(ClientAddr(client));
                }
                if is_websocket_upgrade(&request) {
                    let upgrade = hyper::upgrade::on(&mut request);
                    request.extensions_mut().insert(PendingUpgrade(Arc::new(
                        std::sync::Mutex::new(Some(upgrade)),
                    )));
                }
                let mut service = service.clone();
                tower_service::Service::call(&mut service, request)
            });
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_HEAD_TIMEOUT);
            let served = match tls {
                None => {
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
                Some(tls) => {
                    let stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await
                        {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                tracing::debug!(?client, %error, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(?client, "TLS handshake timed out");
                                return;
                            }
                        };
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
            };
            if let Err(error) = served {
                tracing::debug!(?client, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an IP address")
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|net| net.parse().expect("a CIDR block"))
            .collect()
    }

    /// The client behind the proxy at 127.0.0.1.
    fn behind_local_proxy(headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
        forwarded_client(ip("127.0.0.1"), headers, trusted)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().expect("a header value"));
        }
        map
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let spoofed = headers(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("forwarded", "for=203.0.113.8"),
        ]);
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            forwarded_client(ip("192.0.2.1"), &spoofed, &trusted),
            ip("192.0.2.1")
        );
        assert_eq!(
            forwarded_client(ip("192.0.2.1"), &spoofed, &[]),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        // The client wrote the first entry itself; 10.1.1.1 is a second proxy in the chain.
        let chain = headers(&[("x-forwarded-for", "198.51.100.9, 203.0.113.7, 10.1.1.1")]);
        assert_eq!(behind_local_proxy(&chain, &trusted), ip("203.0.113.7"));
        // Several headers are one list, in order.
        let split = headers(&[
            ("x-forwarded-for", "198.51.100.9"),
            ("x-forwarded-for", "203.0.113.7:5555, 10.1.1.1"),
        ]);
        assert_eq!(behind_local_proxy(&split, &trusted), ip("203.0.113.7"));
        // Only trusted hops: the leftmost of them.
        let inside = headers(&[("x-forwarded-for", "10.2.2.2, 10.1.1.1")]);
        assert_eq!(behind_local_proxy(&inside, &trusted), ip("10.2.2.2"));
        // No header: the proxy itself.
        assert_eq!(
            behind_local_proxy(&HeaderMap::new(), &trusted),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn forwarded_is_read_per_rfc_7239_and_preferred() {
        let trusted = nets(&["127.0.0.1/32", "10.0.0.0/8"]);
        let forwarded = headers(&[
            (
                "forwarded",
                r#"for=198.51.100.9;proto=https, For="[2001:db8:cafe::17]:4711";by=10.0.0.1"#,
            ),
            ("forwarded", "proto=http, for=10.3.3.3"),
            ("x-forwarded-for", "203.0.113.99"),
        ]);
        assert_eq!(
            behind_local_proxy(&forwarded, &trusted),
            ip("2001:db8:cafe::17")
        );
        let port = headers(&[("forwarded", r#"for="192.0.2.43:47011""#)]);
        assert_eq!(behind_local_proxy(&port, &trusted), ip("192.0.2.43"));
    }

    #[test]
    fn a_hop_that_is_not_an_address_stops_at_the_last_trusted_one() {
        let trusted = nets(&["127.0.0.1/32", "10.0.0.0/8"]);
        let unknown = headers(&[("forwarded", "for=203.0.113.7, for=unknown, for=10.1.1.1")]);
        assert_eq!(behind_local_proxy(&unknown, &trusted), ip("10.1.1.1"));
        let garbage = headers(&[("x-forwarded-for", "203.0.113.7, not-an-ip")]);
        assert_eq!(behind_local_proxy(&garbage, &trusted), ip("127.0.0.1"));
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_proxies() {
        let trusted = nets(&["127.0.0.1/32"]);
        let forwarded = headers(&[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(
            forwarded_client(ip("::ffff:127.0.0.1"), &forwarded, &trusted),
            ip("203.0.113.7")
        );
    }
}
