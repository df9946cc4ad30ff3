//! The host↔guest protocol of emberd.
//!
//! Owns `proto/agent.proto`, the code generated from it, the protocol
//! generation exchanged in `Hello`, and the two ends of the transport: a
//! gRPC client [`Channel`](tonic::transport::Channel) over any byte stream
//! ([`channel_over`]) and a gRPC server on one byte stream ([`serve_over`]).
//! Neither side frames or multiplexes by hand: HTTP/2 does. The facts both
//! sides must agree on live in [`boundary`] (ports, names, message cap) and
//! [`kernel_args`] (what the host puts on the guest kernel's command line).

use std::io;
use std::sync::{Arc, Mutex};

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::{Channel, Endpoint};

pub mod boundary;
pub mod kernel_args;
pub mod warm;

/// Generated messages and services of `emberd.agent.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("emberd.agent.v1");
}

/// The protocol generation this build speaks. Bump it when a change to
/// `agent.proto` cannot be ignored by an older peer (see the schema test).
pub const PROTOCOL_GENERATION: u32 = 1;

/// Fingerprints (sha256 of `agent.proto`) accepted for each generation. A
/// backward-compatible change (a new optional field, a new RPC) appends its
/// fingerprint to the current generation; anything else bumps the generation.
pub const SCHEMA_FINGERPRINTS: &[(u32, &str)] = &[
    (
        1,
        "150f0558475801950888bda6cb4395b1505d4afb860b12d673689a8e9995c9a4",
    ),
    (
        1,
        "4f2cf612fa6aec1886d330a2bdee9ef74c9647de5d49b7c5c59d54be3c955d4d",
    ),
    (
        1,
        "e84133b9d32febdc587b07d46f0c2cab8330f53ce2f2389a90a287d8f476dd05",
    ),
    (
        1,
        "14a26b61453fb03b6596b0a0855b569db03687e7e83230e335fb3af643184811",
    ),
];

/// The text of `agent.proto`, for the schema test and for diagnostics.
pub const AGENT_PROTO: &str = include_str!("../proto/agent.proto");

/// HTTP/2 flow-control windows of both ends. Large fixed windows keep many
/// concurrent execs streaming small output chunks within h2's budget for
/// buffered small DATA frames (which scales with the connection window),
/// and let a file stream run without waiting for window updates.
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;

/// Builds a gRPC channel that runs over `stream`, an already connected byte
/// stream to the agent. The channel never dials again: once the stream
/// breaks, calls fail and the caller makes a new channel over a new stream.
pub async fn channel_over<S>(stream: S) -> Result<Channel, tonic::transport::Error>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let slot = Arc::new(Mutex::new(Some(stream)));
    Endpoint::from_static("http://agent.emberd.invalid")
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW)
        .connect_with_connector(tower::service_fn(move |_uri| {
            let taken = slot.lock().map(|mut s| s.take()).unwrap_or(None);
            async move {
                taken.map(TokioIo::new).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotConnected, "agent stream already used")
                })
            }
        }))
        .await
}

/// Serves `routes` on one byte stream until the peer goes away. Returns
/// `Ok(())` on a clean close and the connection error otherwise; either way
/// the caller is free to wait for the next connection.
pub async fn serve_over<S>(
    stream: S,
    routes: tonic::service::Routes,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(routes);
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW)
        .serve_connection(TokioIo::new(stream), service)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn schema_changes_are_tied_to_a_generation() {
        let fingerprint = hex::encode(Sha256::digest(AGENT_PROTO.as_bytes()));
        let known = SCHEMA_FINGERPRINTS
            .iter()
            .find(|(_, fp)| *fp == fingerprint);
        match known {
            Some((generation, _)) => assert_eq!(
                *generation, PROTOCOL_GENERATION,
                "agent.proto matches generation {generation}, but this build speaks \
                 {PROTOCOL_GENERATION}"
            ),
            None => panic!(
                "agent.proto changed (sha256 {fingerprint}). If every change is one an older \
                 peer can ignore (new field, new RPC), add this fingerprint under generation \
                 {PROTOCOL_GENERATION} in SCHEMA_FINGERPRINTS; otherwise bump \
                 PROTOCOL_GENERATION and add it under the new generation."
            ),
        }
    }

    #[test]
    fn generations_only_grow() {
        let mut last = 0;
        for (generation, _) in SCHEMA_FINGERPRINTS {
            assert!(*generation >= last, "SCHEMA_FINGERPRINTS must be ordered");
            last = *generation;
        }
        assert_eq!(last, PROTOCOL_GENERATION);
    }
}
