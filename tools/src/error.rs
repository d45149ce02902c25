//! Why a run could not be carried out, and the exit code each reason maps to.

use std::process::ExitCode;

use thiserror::Error;

use crate::wire::Protocol;

/// A run that could not be carried out (as opposed to one that ran and failed a check, which
/// is reported with its figures).
#[derive(Debug, Error)]
pub enum BenchError {
    /// Nothing answered at the URL: connection refused, no WebSocket upgrade, or a timeout.
    #[error("cannot reach the server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// Something answered the WebSocket handshake but did not speak the protocol.
    #[error("the server at {url} does not speak {protocol}: {reason}")]
    NotYWebsocket {
        url: String,
        protocol: Protocol,
        reason: String,
    },
    /// A connection failed or misbehaved after the target was known to be reachable.
    #[error("connection to {url} failed: {reason}")]
    Connection { url: String, reason: String },
    /// Bad arguments, unreadable trace, missing process: anything on our side.
    #[error("{0}")]
    Setup(String),
}

impl BenchError {
    /// 3 when the target could not be used at all, 1 otherwise (2 is clap's usage error).
    pub fn exit_code(&self) -> ExitCode {
        match self {
            BenchError::Unreachable { .. } | BenchError::NotYWebsocket { .. } => ExitCode::from(3),
            BenchError::Connection { .. } | BenchError::Setup(_) => ExitCode::from(1),
        }
    }
}
