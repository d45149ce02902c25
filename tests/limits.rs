//! Message size limits: multi-MiB updates pass with the defaults; a message over a configured
//! limit closes that one connection with 1009 and a reason, and the room carries on.

mod common;

use common::{Client, TestServer, text};

/// `len` bytes of ASCII text that is not one repeated character.
fn filler(len: usize, seed: u8) -> String {
    (0..len)
        .map(|index| char::from(b'a' + ((index + usize::from(seed)) % 26) as u8))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_mib_insert_passes_with_the_default_limits() {
    let server = TestServer::start().await;
    let writer = Client::connect(&server, "big").await;
    let reader = Client::connect(&server, "big").await;
    let big = filler(2 * 1024 * 1024, 0);

    writer.append_text("text", &big).await;
    reader.wait_text("text", &big).await;
    let late = Client::connect(&server, "big").await;
    assert!(
        text(&late.doc, "text") == big,
        "the late joiner lacks the big insert"
    );
    assert!(!writer.ended(), "the writer must stay connected");
    // The connection still works after the big message.
    writer.append_text("text", "!").await;
    reader.wait_text("text", &format!("{big}!")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_closes_only_its_connection_with_1009() {
    let server = TestServer::start_with(|config| config.limits.max_message_bytes = 64 * 1024).await;
    let writer = Client::connect(&server, "doc").await;
    let reader = Client::connect(&server, "doc").await;
    writer.append_text("text", "before;").await;
    // A message well under the limit passes.
    let medium = filler(32 * 1024, 1);
    writer.append_text("text", &medium).await;
    let expected = format!("before;{medium}");
    reader.wait_text("text", &expected).await;

    let offender = Client::connect(&server, "doc").await;
    offender.append_text("text", &filler(100 * 1024, 2)).await;
    let (code, reason) = offender
        .wait_closed()
        .await
        .expect("the server sends a close frame");
    assert_eq!(code, 1009, "reason: {reason}");
    assert!(
        !reason.is_empty(),
        "the reason must tell the client not to resend"
    );

    // The room is intact: nothing of the oversized update got in, and the others carry on.
    let fresh = Client::connect(&server, "doc").await;
    assert!(text(&fresh.doc, "text") == expected);
    writer.append_text("text", "after;").await;
    let expected = format!("{expected}after;");
    reader.wait_text("text", &expected).await;
    fresh.wait_text("text", &expected).await;
    assert!(!writer.ended() && !reader.ended());
}
