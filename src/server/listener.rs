//! The accept loop: plain TCP or TLS, one hyper connection per socket, graceful shutdown.
//!
//! warp 0.4 serves plain TCP only and keeps the client address to itself, so ycord runs its
//! own loop around `warp::service`: it terminates TLS when configured, bounds the time a client
//! may take for the TLS handshake and the HTTP request head (a slowloris holds nothing for
//! long), and tags every request with the client's address for per-IP limits.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Longest a client may take for the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a client may take to send the head of an HTTP request (the WebSocket upgrade).
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to pause accepting after an error such as running out of file descriptors.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The client's address, attached to every request (read with `warp::ext::get`).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The upgrade of a WebSocket request, taken out of hyper before warp routes the request so
/// that ycord can build the WebSocket itself (warp's `ws()` hides tungstenite's buffer sizes,
/// whose 128 KiB default read buffer was most of an idle connection's memory).
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

/// Accepts connections until `shutdown`, serving each with `service`; then waits for the
/// open HTTP exchanges to finish (upgraded WebSockets are no longer HTTP and end on their own
/// shutdown path).
pub async fn accept_loop<S>(
    listener: TcpListener,
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
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut request: http::Request<_>| {
                request.extensions_mut().insert(ClientAddr(client));
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
                                tracing::debug!(%client, %error, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%client, "TLS handshake timed out");
                                return;
                            }
                        };
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%client, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
