//! The files API against hostile requests, on a real VM (QEMU/TCG here):
//! bad paths, unknown sandboxes, devices, directories, transfers over the
//! limit, a full disk, stalled and abandoned uploads, a file that grows while
//! it is read: each a clear 4xx, nothing partial left, and the daemon and the
//! sandbox keep serving.
//!
//! This test needs the images built by `make images`. It fails, never skips,
//! when a VM does not come up.

mod files_common;
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use files_common::*;
use futures::StreamExt as _;
use reqwest::Method;
use serde_json::json;

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
