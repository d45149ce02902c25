//! The per-IP connect limit over real sockets: forwarding headers name the client only when the
//! peer is in `--trusted-proxies`, and the default limit lets a reconnect storm from one address
//! through while refusing a flood.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Instant;

use clap::Parser;
use common::{TestServer, WAIT};
use futures_util::future::join_all;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite};
use ycord::config::Cli;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// `ycord_limit_hits_total{reason="connects_per_ip"}`.
fn connect_limit_hits(server: &TestServer) -> u64 {
    let name = "ycord_limit_hits_total{reason=\"connects_per_ip\"} ";
    server
        .server()
        .metrics()
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .map_or(0, |value| value.trim().parse::<f64>().unwrap() as u64)
}

/// The server's default `--max-connects-per-ip-per-sec` (the tests' config lifts it).
fn default_connect_rate() -> u64 {
    Cli::parse_from(["ycord"])
        .serve
        .limits
        .max_connects_per_ip_per_sec
}

/// Opens a WebSocket with extra request headers: the socket, or the HTTP status of a refusal.
async fn connect(url: &str, headers: &[(&'static str, String)]) -> Result<Socket, u16> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(*name, value.parse().unwrap());
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("answer in time")
    {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("expected an HTTP answer, got {other}"),
    }
}

/// Statuses of `attempts` sequential upgrades, each with the headers `headers(i)`; accepted
/// sockets are dropped at once.
async fn attempts(
    url: &str,
    attempts: usize,
    headers: impl Fn(usize) -> Vec<(&'static str, String)>,
) -> Vec<Result<(), u16>> {
    let mut statuses = Vec::new();
    for i in 0..attempts {
        statuses.push(connect(url, &headers(i)).await.map(drop));
    }
    statuses
}

fn refused(statuses: &[Result<(), u16>]) -> u64 {
    assert!(
        statuses
            .iter()
            .all(|status| matches!(status, Ok(()) | Err(429))),
        "{statuses:?}"
    );
    statuses.iter().filter(|status| status.is_err()).count() as u64
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    // 1 per second with a burst of 5; no trusted proxy (the default).
    let server =
        TestServer::start_with(|config| config.limits.max_connects_per_ip_per_sec = 1).await;
    assert!(server.config.trusted_proxies.is_empty());
    let url = server.room_url("doc");
    // Every attempt claims to forward a different client: the real address is still limited.
    let statuses = attempts(&url, 20, |i| {
        vec![
            ("x-forwarded-for", format!("203.0.113.{i}")),
            ("forwarded", format!("for=198.51.100.{i}")),
        ]
    })
    .await;
    let refused = refused(&statuses);
    assert!(refused >= 10, "{statuses:?}");
    assert_eq!(connect_limit_hits(&server), refused);
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_is_limited_separately() {
    let server = TestServer::start_with(|config| {
        config.limits.max_connects_per_ip_per_sec = 1;
        config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let url = server.room_url("doc");

    // Twenty clients behind the proxy, each within its own burst of 5.
    let statuses = attempts(&url, 20, |i| {
        vec![("x-forwarded-for", format!("203.0.113.{i}"))]
    })
    .await;
    assert_eq!(refused(&statuses), 0, "{statuses:?}");
    let statuses = attempts(&url, 20, |i| {
        vec![(
            "forwarded",
            format!("for=\"[2001:db8::{i:x}]:4711\";proto=http"),
        )]
    })
    .await;
    assert_eq!(refused(&statuses), 0, "{statuses:?}");
    assert_eq!(connect_limit_hits(&server), 0);

    // One forwarded client opening twenty connections is limited by its own address; a spoofed
    // entry it put in front of the proxy's does not help it (the rightmost untrusted hop counts).
    let statuses = attempts(&url, 20, |i| {
        vec![("x-forwarded-for", format!("192.0.2.{i}, 198.51.100.1"))]
    })
    .await;
    let refused = refused(&statuses);
    assert!(refused >= 10, "{statuses:?}");
    assert_eq!(connect_limit_hits(&server), refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_client_reconnect_storm_from_one_address_passes_the_default_limit() {
    let server = TestServer::start_with(|config| {
        config.limits.max_connects_per_ip_per_sec = default_connect_rate();
    })
    .await;
    let url = server.room_url("doc");
    let sockets = join_all((0..200).map(|_| connect(&url, &[]))).await;
    let refused = sockets.iter().filter(|socket| socket.is_err()).count();
    assert_eq!(refused, 0, "{refused} of 200 joins refused");
    assert_eq!(connect_limit_hits(&server), 0);
    drop(sockets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_from_one_address_is_refused_at_the_default_limit() {
    let rate = default_connect_rate();
    let server = TestServer::start_with(|config| {
        config.limits.max_connects_per_ip_per_sec = rate;
    })
    .await;
    let url = server.room_url("doc");
    let started = Instant::now();
    // 2000 attempts, 50 at a time.
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let batch = join_all((0..50).map(|_| connect(&url, &[]))).await;
        statuses.extend(batch.into_iter().map(|socket| socket.map(drop)));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let refused = refused(&statuses);
    let accepted = statuses.len() as u64 - refused;
    // The bucket holds five seconds' worth and refills at `rate`: nothing beyond that gets in,
    // however long the flood took.
    let bound = (rate as f64 * (ycord::limit::BURST_SECONDS + elapsed)).ceil() as u64 + 1;
    assert!(
        accepted <= bound,
        "{accepted} accepted in {elapsed:.1} s (bound {bound})"
    );
    assert!(
        refused > 0,
        "a flood of 2000 in {elapsed:.1} s was let through"
    );
    assert_eq!(connect_limit_hits(&server), refused);
}
