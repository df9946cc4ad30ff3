//! The files API end to end, on real VMs (QEMU/TCG here): a 100 MiB file up
//! and down intact while neither the daemon nor the agent holds it whole, a
//! directory tree through tar, and transfers that end with their sandbox.
//! Hostile requests are in `files_hostile.rs`.
//!
//! These tests need the images built by `make images`. They fail, never
//! skip, when a VM does not come up.

mod files_common;
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use files_common::*;
use futures::StreamExt as _;
use reqwest::Method;
use serde_json::json;
use sha2::{Digest, Sha256};

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
