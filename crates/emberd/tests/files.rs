//! The files API end to end, on real VMs (QEMU/TCG here): a 100 MiB file up
//! and down intact while neither the daemon nor the agent holds it whole, a
//! directory tree through tar, and hostile requests answered with clear 4xx
//! while the daemon and the sandbox keep serving.
//!
//! These tests need the images built by `make images`. They fail, never
//! skip, when a VM does not come up.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::Api;

const MIB: usize = 1024 * 1024;

/// Fills the sandbox's writable layer, then frees 4 MiB; prints the
/// ballast's size in MiB and any leftover of the over-limit uploads.
const FILL_BUT_4_MIB: &str = "import os
path = '/home/sandbox/ballast'
with open(path, 'wb', buffering=0) as f:
    try:
        while True:
            f.write(b'b' * (1 << 20))
    except OSError:
        pass
os.truncate(path, max(0, os.path.getsize(path) - (4 << 20)))
print(os.path.getsize(path) >> 20, [n for n in os.listdir('/tmp') if 'over' in n], end='')";

/// Creates a sandbox with `request` as the create body.
async fn create(api: &Api, request: Value) -> String {
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

fn files(api: &Api, method: Method, id: &str, query: &[(&str, &str)]) -> reqwest::RequestBuilder {
    api.http
        .request(method, format!("{}/sandboxes/{id}/files", api.base))
        .query(query)
}

async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.bytes().await.expect("body");
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

/// Runs python `code` in the sandbox and returns its stdout; panics unless it exits 0.
async fn run(api: &Api, id: &str, code: &str) -> String {
    let out = api.exec(id, code).await;
    assert_eq!(out.exit_code, 0, "{code}: {}", out.stderr);
    out.stdout
}

/// `len` bytes of a deterministic pseudo-random pattern, in chunks of `chunk`.
fn pattern(len: usize, chunk: usize) -> impl Iterator<Item = Bytes> {
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

fn pattern_sha(len: usize) -> String {
    let mut hash = Sha256::new();
    for chunk in pattern(len, MIB) {
        hash.update(&chunk);
    }
    hex::encode(hash.finalize())
}

fn streamed(len: usize) -> reqwest::Body {
    reqwest::Body::wrap_stream(futures::stream::iter(
        pattern(len, 256 * 1024).map(Ok::<_, std::io::Error>),
    ))
}

/// A `/proc/<pid>/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status_field_kib(&status, field)
}

fn status_field_kib(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Samples a process's resident memory until dropped; keeps the peak.
struct RssSampler {
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
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

    fn peak_kib(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        self.peak_kib.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_100_mib_file_goes_up_and_down_intact_without_being_held_whole() {
    const LEN: usize = 100 * MIB;
    const BOUND_KIB: u64 = 50 * 1024;
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    // The writable layer is a tmpfs in guest RAM: room for the file.
    let id = create(
        &api,
        json!({ "language_pack": "python", "memory_mib": 512, "disk_mib": 512 }),
    )
    .await;
    let expected = pattern_sha(LEN);
    let pid = daemon.pid();
    let rss_before = status_kib(pid, "VmRSS:");

    let sampler = RssSampler::start(pid);
    let started = Instant::now();
    let response = files(&api, Method::PUT, &id, &[("path", "/home/sandbox/big.bin")])
        .body(streamed(LEN))
        .send()
        .await
        .unwrap();
    let up = started.elapsed();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["bytes"], LEN as u64, "{body}");
    assert_eq!(body["path"], "/home/sandbox/big.bin");

    let started = Instant::now();
    let response = files(&api, Method::GET, &id, &[("path", "/home/sandbox/big.bin")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), Some(LEN as u64));
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(response.headers()["x-emberd-kind"], "file");
    assert_eq!(response.headers()["x-emberd-mode"], "0644");
    let mut hash = Sha256::new();
    let mut got = 0;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("download chunk");
        got += chunk.len();
        hash.update(&chunk);
    }
    let down = started.elapsed();
    let daemon_peak_kib = sampler.peak_kib().max(status_kib(pid, "VmRSS:"));
    assert_eq!(got, LEN);
    assert_eq!(
        hex::encode(hash.finalize()),
        expected,
        "the bytes came back changed"
    );

    // The guest sees the same bytes.
    let guest_sha = run(
        &api,
        &id,
        "import hashlib\nh = hashlib.sha256()\nwith open('/home/sandbox/big.bin', 'rb') as f:\n    for b in iter(lambda: f.read(1 << 20), b''):\n        h.update(b)\nprint(h.hexdigest(), end='')",
    )
    .await;
    assert_eq!(guest_sha, expected);

    let agent_status = run(&api, &id, "print(open('/proc/1/status').read(), end='')").await;
    let agent_hwm_kib = status_field_kib(&agent_status, "VmHWM:");
    let daemon_hwm_kib = status_kib(pid, "VmHWM:");
    println!(
        "100 MiB up in {up:?} ({:.1} MB/s), down in {down:?} ({:.1} MB/s); daemon RSS {rss_before} KiB before, peak {daemon_peak_kib} KiB during (VmHWM {daemon_hwm_kib} KiB); agent VmHWM {agent_hwm_kib} KiB",
        LEN as f64 / up.as_secs_f64() / 1e6,
        LEN as f64 / down.as_secs_f64() / 1e6,
    );
    assert!(
        daemon_peak_kib.saturating_sub(rss_before) < BOUND_KIB,
        "the daemon grew by {} KiB during the transfers",
        daemon_peak_kib.saturating_sub(rss_before)
    );
    assert!(
        agent_hwm_kib < BOUND_KIB,
        "the agent's peak RSS is {agent_hwm_kib} KiB"
    );
}

#[tokio::test]
async fn a_directory_tree_round_trips_as_tar() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let id = api.create("python").await;
    run(
        &api,
        &id,
        "import os\nos.makedirs('/home/sandbox/tree/sub/deeper')\nopen('/home/sandbox/tree/a.txt', 'w').write('alpha')\nos.chmod('/home/sandbox/tree/a.txt', 0o640)\nopen('/home/sandbox/tree/sub/run.sh', 'w').write('#!/bin/sh\\necho hi\\n')\nos.chmod('/home/sandbox/tree/sub/run.sh', 0o755)\nopen('/home/sandbox/tree/sub/deeper/z', 'w').write('z' * 100000)\nos.symlink('a.txt', '/home/sandbox/tree/link')",
    )
    .await;

    // A listing two levels down sees the tree, the symlink as a symlink.
    let response = api
        .http
        .get(format!("{}/sandboxes/{id}/files/list", api.base))
        .query(&[("path", "/home/sandbox/tree"), ("depth", "2")])
        .send()
        .await
        .unwrap();
    let (status, listing) = json_of(response).await;
    assert_eq!(status, 200, "{listing}");
    let entries = listing["entries"].as_array().unwrap();
    let find = |path: &str| {
        entries
            .iter()
            .find(|e| e["path"] == path)
            .unwrap_or_else(|| panic!("{path} not listed: {listing}"))
    };
    assert_eq!(find("/home/sandbox/tree/a.txt")["mode"], "0640");
    assert_eq!(find("/home/sandbox/tree/a.txt")["size"], 5);
    assert_eq!(find("/home/sandbox/tree/sub/run.sh")["mode"], "0755");
    assert_eq!(find("/home/sandbox/tree/link")["type"], "symlink");
    assert_eq!(find("/home/sandbox/tree/link")["link_target"], "a.txt");
    assert_eq!(find("/home/sandbox/tree/sub")["type"], "dir");

    let response = files(
        &api,
        Method::GET,
        &id,
        &[("path", "/home/sandbox/tree"), ("format", "tar")],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-tar");
    let archive = response.bytes().await.unwrap();

    // The host's tar reads it: names, modes and the link as they were.
    let host = tempfile::tempdir().unwrap();
    let tar_path = host.path().join("tree.tar");
    std::fs::write(&tar_path, &archive).unwrap();
    let listing = std::process::Command::new("tar")
        .arg("-tvf")
        .arg(&tar_path)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    println!("{listing}");
    for (mode, name) in [
        ("-rw-r-----", "a.txt"),
        ("-rwxr-xr-x", "sub/run.sh"),
        ("lrwxrwxrwx", "link -> a.txt"),
        ("-rw-r--r--", "sub/deeper/z"),
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(name)),
            "{mode} {name} missing from:\n{listing}"
        );
    }

    // Up again elsewhere: the same tree comes out.
    let response = files(&api, Method::PUT, &id, &[("path", "/home/sandbox/copy")])
        .header("content-type", "application/x-tar")
        .body(archive.clone())
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 201, "{body}");
    assert!(body["entries"].as_u64().unwrap() >= 4, "{body}");
    let check = run(
        &api,
        &id,
        "import os, stat\nb = '/home/sandbox/copy/'\nprint(oct(os.stat(b + 'a.txt').st_mode & 0o7777), oct(os.stat(b + 'sub/run.sh').st_mode & 0o7777), os.readlink(b + 'link'), open(b + 'link').read(), len(open(b + 'sub/deeper/z').read()), os.stat(b + 'a.txt').st_uid, end='')",
    )
    .await;
    assert_eq!(check, "0o640 0o755 a.txt alpha 100000 1000");

    // Uploaded files belong to the sandbox user unless root is asked for.
    for query in [
        vec![("path", "/home/sandbox/new/mine.txt"), ("mkdir", "true")],
        vec![("path", "/opt/theirs.txt"), ("user", "root")],
    ] {
        let response = files(&api, Method::PUT, &id, &query)
            .body("owned")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{query:?}");
    }
    let owners = run(
        &api,
        &id,
        "import os\nprint(os.stat('/home/sandbox/new/mine.txt').st_uid, os.stat('/home/sandbox/new').st_uid, os.stat('/opt/theirs.txt').st_uid, end='')",
    )
    .await;
    assert_eq!(owners, "1000 1000 0");
}

#[tokio::test]
async fn hostile_requests_get_clear_4xx_and_the_sandbox_keeps_serving() {
    let daemon = support::start(&["--max-transfer-mib", "16", "--body-read-timeout", "3s"]);
    let api = support::api(&daemon);
    // A small writable layer, to fill it.
    let id = create(&api, json!({ "language_pack": "python", "disk_mib": 32 })).await;

    let long = format!("/tmp/{}", "a".repeat(4100));
    for (path, why) in [
        ("relative/x", "absolute"),
        ("/tmp/../etc/passwd", "\"..\""),
        ("/tmp/a\0b", "NUL"),
        (long.as_str(), "bytes long"),
        ("", "required"),
    ] {
        for method in [Method::GET, Method::HEAD, Method::PUT, Method::DELETE] {
            let response = files(&api, method.clone(), &id, &[("path", path)])
                .body("x")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 400, "{method} {path:.20}");
            if method != Method::HEAD {
                let (_, body) = json_of(response).await;
                let message = body["error"].as_str().unwrap();
                assert!(message.starts_with("invalid path"), "{message}");
                assert!(message.contains(why), "{message}");
            }
        }
    }

    // An unknown sandbox is a 404 for every route.
    for method in [Method::GET, Method::HEAD, Method::PUT, Method::DELETE] {
        let response = files(
            &api,
            method.clone(),
            "sb_000000000000",
            &[("path", "/tmp/x")],
        )
        .body("x")
        .send()
        .await
        .unwrap();
        assert_eq!(response.status(), 404, "{method}");
    }

    // Files that are not there, not files, or endless.
    let (status, body) = json_of(
        files(&api, Method::GET, &id, &[("path", "/tmp/nothing")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (404, Some("no such file: /tmp/nothing"))
    );
    let started = Instant::now();
    let (status, body) = json_of(
        files(&api, Method::GET, &id, &[("path", "/dev/zero")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not a regular file"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let (status, body) = json_of(
        files(&api, Method::GET, &id, &[("path", "/home/sandbox")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("is a directory (ask with format=tar)"));
    let head = files(&api, Method::HEAD, &id, &[("path", "/home/sandbox")])
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["x-emberd-kind"], "dir");
    let response = api
        .http
        .get(format!("{}/sandboxes/{id}/files/list", api.base))
        .query(&[("path", "/tmp"), ("depth", "99")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // A directory with entries is removed only when asked to be recursive.
    run(
        &api,
        &id,
        "import os\nos.makedirs('/tmp/full/x')\nopen('/tmp/full/x/f', 'w').write('1')",
    )
    .await;
    let response = files(&api, Method::DELETE, &id, &[("path", "/tmp/full")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let response = files(
        &api,
        Method::DELETE,
        &id,
        &[("path", "/tmp/full"), ("recursive", "true")],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 204);
    let response = files(&api, Method::HEAD, &id, &[("path", "/tmp/full")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    // Uploads over the transfer limit: announced, then streamed.
    let response = files(&api, Method::PUT, &id, &[("path", "/tmp/over")])
        .body(vec![0u8; 17 * MIB])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let response = files(&api, Method::PUT, &id, &[("path", "/tmp/over")])
        .body(streamed(17 * MIB))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--max-transfer-mib"),
        "{body}"
    );

    // A full disk: 413, nothing partial left, and the sandbox still runs code.
    // Fill the layer, then free 4 MiB: less than the upload needs.
    let ballast = run(&api, &id, FILL_BUT_4_MIB).await;
    assert!(
        ballast.ends_with(" []"),
        "partial over-limit uploads left: {ballast}"
    );
    let response = files(
        &api,
        Method::PUT,
        &id,
        &[("path", "/home/sandbox/in/fill"), ("mkdir", "true")],
    )
    .body(streamed(12 * MIB))
    .send()
    .await
    .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "no space left in the sandbox");
    let left = run(&api, &id, "import os\nprint(os.listdir('/home/sandbox/in'), [n for n in os.listdir('/tmp') if 'over' in n], end='')").await;
    assert_eq!(left, "[] []", "partial files left");
    let response = files(
        &api,
        Method::DELETE,
        &id,
        &[("path", "/home/sandbox/ballast")],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 204);

    // A stalled upload: 408 after the body read timeout, nothing left.
    let stalling = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(vec![1u8; 1000]))])
        .chain(futures::stream::pending());
    let started = Instant::now();
    let response = files(&api, Method::PUT, &id, &[("path", "/tmp/stalled")])
        .body(reqwest::Body::wrap_stream(stalling))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 408);
    assert!(started.elapsed() < Duration::from_secs(60));
    // A client that goes away mid-upload: nothing left either.
    let broken = futures::stream::iter(pattern(MIB, 64 * 1024).map(Ok::<_, std::io::Error>)).chain(
        futures::stream::once(async { Err(std::io::Error::other("client gave up")) }),
    );
    let _ = files(&api, Method::PUT, &id, &[("path", "/tmp/broken")])
        .body(reqwest::Body::wrap_stream(broken))
        .send()
        .await;
    api.wait_for_output(
        &id,
        "import os\nprint([n for n in os.listdir('/tmp') if 'stalled' in n or 'broken' in n], end='')",
        "[]",
        Duration::from_secs(30),
    )
    .await;

    // A file that grows while it is read ends where it was at stat.
    let response = files(
        &api,
        Method::PUT,
        &id,
        &[("path", "/tmp/growing"), ("mode", "0600")],
    )
    .body(streamed(8 * MIB))
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 201);
    let response = files(&api, Method::GET, &id, &[("path", "/tmp/growing")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-emberd-mode"], "0600");
    let declared = response.content_length().unwrap();
    let mut body = response.bytes_stream();
    let mut got = body.next().await.unwrap().unwrap().len() as u64;
    run(
        &api,
        &id,
        "open('/tmp/growing', 'ab').write(b'x' * (4 << 20))",
    )
    .await;
    while let Some(chunk) = body.next().await {
        got += chunk.expect("chunk").len() as u64;
    }
    assert_eq!((declared, got), (8 * MIB as u64, 8 * MIB as u64));

    // After all that, the daemon and the sandbox still serve.
    let response = files(&api, Method::PUT, &id, &[("path", "/tmp/ok.txt")])
        .body("fine")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let text = files(&api, Method::GET, &id, &[("path", "/tmp/ok.txt")])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, "fine");
    assert_eq!(run(&api, &id, "print('alive', end='')").await, "alive");
}

#[tokio::test]
async fn deleting_the_sandbox_ends_its_transfers() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let id = api.create("python").await;
    run(
        &api,
        &id,
        "with open('/tmp/big', 'wb') as f:\n    for _ in range(32):\n        f.write(b'y' * (1 << 20))",
    )
    .await;
    let response = files(&api, Method::GET, &id, &[("path", "/tmp/big")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut download = response.bytes_stream();
    download.next().await.unwrap().unwrap();

    // An upload that keeps its body coming while the sandbox goes away.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let upload = tokio::spawn(
        files(&api, Method::PUT, &id, &[("path", "/tmp/up")])
            .body(reqwest::Body::wrap_stream(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
            .send(),
    );
    tx.send(Ok(Bytes::from(vec![0u8; 64 * 1024])))
        .await
        .unwrap();
    assert_eq!(api.delete(&id).await, 204);
    // (The client reads the answer once its body is sent.)
    drop(tx);

    // The download ends short, with an error, not a hang.
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        let mut got = 0usize;
        while let Some(chunk) = download.next().await {
            match chunk {
                Ok(chunk) => got += chunk.len(),
                Err(_) => return Err(got),
            }
        }
        Ok(got)
    })
    .await
    .expect("the download ended");
    assert!(ended.is_err(), "the download ended cleanly: {ended:?}");

    let response = tokio::time::timeout(Duration::from_secs(30), upload)
        .await
        .expect("the upload was answered")
        .unwrap()
        .unwrap();
    assert!(
        [404, 409].contains(&response.status().as_u16()),
        "{}",
        response.status()
    );
    // The daemon serves on.
    let (status, _) = api.raw(Method::GET, "/healthz", None).await;
    assert_eq!(status, 200);
}
