//! Helpers of the files API's real-VM tests (`tests/files.rs`,
//! `tests/files_hostile.rs`): requests, a deterministic byte pattern, and
//! memory figures of a process.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::Api;

pub const MIB: usize = 1024 * 1024;

/// Creates a sandbox with `request` as the create body.
pub async fn create(api: &Api, request: Value) -> String {
    let (status, body) = api
        .raw(
            Method::POST,
            "/sandboxes",
            Some(request.to_string().into_bytes()),
        )
        .await;
    assert_eq!(status, 201, "create: {body}");
    body["id"].as_str().unwrap().to_owned()
}

pub fn files(
    api: &Api,
    method: Method,
    id: &str,
    query: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    api.http
        .request(method, format!("{}/sandboxes/{id}/files", api.base))
        .query(query)
}

pub async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.bytes().await.expect("body");
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

/// Runs python `code` in the sandbox and returns its stdout; panics unless it exits 0.
pub async fn run(api: &Api, id: &str, code: &str) -> String {
    let out = api.exec(id, code).await;
    assert_eq!(out.exit_code, 0, "{code}: {}", out.stderr);
    out.stdout
}

/// `len` bytes of a deterministic pseudo-random pattern, in chunks of `chunk`.
pub fn pattern(len: usize, chunk: usize) -> impl Iterator<Item = Bytes> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut left = len;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(chunk);
        left -= n;
        let mut buf = Vec::with_capacity(n + 8);
        while buf.len() < n {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            buf.extend_from_slice(&state.to_le_bytes());
        }
        buf.truncate(n);
        Some(Bytes::from(buf))
    })
}

pub fn pattern_sha(len: usize) -> String {
    let mut hash = Sha256::new();
    for chunk in pattern(len, MIB) {
        hash.update(&chunk);
    }
    hex::encode(hash.finalize())
}

pub fn streamed(len: usize) -> reqwest::Body {
    reqwest::Body::wrap_stream(futures::stream::iter(
        pattern(len, 256 * 1024).map(Ok::<_, std::io::Error>),
    ))
}

/// A `/proc/<pid>/status` field in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status_field_kib(&status, field)
}

pub fn status_field_kib(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Samples a process's resident memory until dropped; keeps the peak.
pub struct RssSampler {
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> Self {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (peak_kib, stop) = (peak_kib.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::SeqCst) {
                    peak_kib.fetch_max(status_kib(pid, "VmRSS:"), Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        RssSampler {
            peak_kib,
            stop,
            thread: Some(thread),
        }
    }

    pub fn peak_kib(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        self.peak_kib.load(Ordering::SeqCst)
    }
}
