//! The HTTP limits end to end. On a real VM: output over the cap is cut and
//! flagged, a timeout over the maximum and a body over 16 MiB are refused,
//! and output that is not UTF-8 comes back decoded lossily. On the real
//! server loop (`api::serve`) over the fake backend: a client that writes a
//! whole oversized body still reads its 413 (raw TCP and Python's urllib),
//! slow headers and slow bodies are cut off, and a panicking request is a
//! 500 that leaves every other request alone.

mod fixture;
mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use emberd::api::HttpConfig;
use tokio_util::sync::CancellationToken;

use reqwest::Method;
use serde_json::json;

/// Per-stream output cap of an exec.
const OUTPUT_CAP: usize = 4 * 1024 * 1024;
/// Largest exec body.
const BODY_LIMIT: usize = 16 * 1024 * 1024;
/// The longest timeout an exec may ask for, in ms.
const MAX_TIMEOUT_MS: u64 = 3_600_000;

#[tokio::test]
async fn exec_limits_hold_over_http() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let id = api.create("python").await;

    // A flood of stdout: the first 4 MiB come back, flagged as cut.
    let out = api
        .exec(
            &id,
            "import sys\nsys.stdout.write('x' * (5 << 20))\nsys.stderr.write('done')",
        )
        .await;
    assert_eq!(out.exit_code, 0, "{:?}", out.error);
    assert_eq!(out.stdout.len(), OUTPUT_CAP);
    assert!(out.stdout.bytes().all(|b| b == b'x'));
    assert!(out.stdout_truncated);
    assert_eq!(out.stderr, "done");
    assert!(!out.stderr_truncated);

    // A timeout over the maximum is the client's mistake; the maximum itself is fine.
    let (status, body) = api
        .exec_raw(
            &id,
            &json!({ "code": "print(1)", "timeout_ms": MAX_TIMEOUT_MS + 1 }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body,
        json!({ "error": format!("invalid request: timeout_ms must be at most {MAX_TIMEOUT_MS}") })
    );
    let out = api
        .exec_with(
            &id,
            json!({ "code": "print(1)", "timeout_ms": MAX_TIMEOUT_MS }),
        )
        .await;
    assert_eq!(out.stdout, "1\n");

    // A body of exactly the limit is read; one byte more is a 413.
    let path = format!("/sandboxes/{id}/exec");
    let padded = |len: usize| {
        let mut body = br#"{"code":"print(2)"}"#.to_vec();
        body.resize(len, b' ');
        body
    };
    let (status, body) = api.raw(Method::POST, &path, Some(padded(BODY_LIMIT))).await;
    assert_eq!((status, &body["stdout"]), (200, &json!("2\n")), "{body}");
    let (status, body) = api
        .raw(Method::POST, &path, Some(padded(BODY_LIMIT + 1)))
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(
        body,
        json!({ "error": format!("request body too large (limit {BODY_LIMIT} bytes)") })
    );

    // Bytes that are not UTF-8 become U+FFFD; the exec is still a 200.
    let out = api
        .exec(
            &id,
            "import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe end\\n')\nsys.stderr.buffer.write(b'\\xc3(')",
        )
        .await;
    assert_eq!(out.stdout, "ok \u{FFFD}\u{FFFD} end\n");
    assert_eq!(out.stderr, "\u{FFFD}(");
    assert_eq!(out.exit_code, 0);

    assert_eq!(api.delete(&id).await, 204);
}

/// `api::serve` on a free loopback port, stopped on drop.
struct Served {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(app: Router, header_read_timeout: Duration) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(emberd::api::serve(
        listener,
        app,
        header_read_timeout,
        stop.clone(),
    ));
    Served { addr, stop }
}

/// Writes `head` and `body` whole, then reads the answer until the server
/// closes; blocking, for `spawn_blocking`.
fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Oversized bodies: 20 MiB (the case of the original examples), and 64 MiB,
/// more than loopback's socket buffers hold (they autotune to 32 MiB here),
/// so that closing without reading the rest would reset the connection
/// while the client still writes.
const OVERSIZED: [usize; 2] = [20 * 1024 * 1024, 64 * 1024 * 1024];

#[tokio::test]
async fn a_client_that_writes_a_whole_oversized_body_reads_its_413() {
    let daemon = fixture::Daemon::start();
    let id = daemon.create("shell").await;
    let served = serve(
        emberd::api::app(daemon.manager.clone()),
        emberd::api::DEFAULT_HEADER_READ_TIMEOUT,
    )
    .await;
    let addr = served.addr;
    for size in OVERSIZED {
        let head = format!(
            "POST /sandboxes/{id}/exec HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
        );
        let answer = tokio::task::spawn_blocking(move || exchange(addr, &head, &vec![b' '; size]))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("writing {size} bytes and reading the answer: {e}"));
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{answer}"
        );
        assert!(
            answer.ends_with(&format!(
                r#"{{"error":"request body too large (limit {BODY_LIMIT} bytes)"}}"#
            )),
            "{answer}"
        );
    }
    daemon.stop().await;
}

#[tokio::test]
async fn python_urllib_reads_the_413_of_an_oversized_body() {
    let daemon = fixture::Daemon::start();
    let id = daemon.create("shell").await;
    let served = serve(
        emberd::api::app(daemon.manager.clone()),
        emberd::api::DEFAULT_HEADER_READ_TIMEOUT,
    )
    .await;
    for size in OVERSIZED {
        // As the original examples call the API.
        let script = format!(
            r#"
import urllib.request, urllib.error
request = urllib.request.Request(
    "http://{addr}/sandboxes/{id}/exec",
    data=b" " * {size},
    headers={{"Content-Type": "application/json"}},
    method="POST",
)
try:
    urllib.request.urlopen(request, timeout=60)
    print("no error")
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"#,
            addr = served.addr
        );
        let output = tokio::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .await
            .expect("python3 runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        assert_eq!(
            stdout.trim(),
            format!(r#"413 {{"error":"request body too large (limit {BODY_LIMIT} bytes)"}}"#),
            "{size}: {stderr}"
        );
    }
    daemon.stop().await;
}

/// Reads from `stream` until the server closes it; how long that took.
fn time_to_close(mut stream: TcpStream) -> (Duration, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    // A reset also ends the connection; only a read timeout means it stayed open.
    if let Err(e) = stream.read_to_end(&mut answer) {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the connection stayed open"
        );
    }
    (
        started.elapsed(),
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_cut_off() {
    let daemon = fixture::Daemon::start();
    let served = serve(
        emberd::api::app(daemon.manager.clone()),
        Duration::from_millis(300),
    )
    .await;
    let addr = served.addr;
    let (slow, idle) = tokio::task::spawn_blocking(move || {
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .unwrap();
        let idle = TcpStream::connect(addr).unwrap();
        (time_to_close(slow), time_to_close(idle))
    })
    .await
    .unwrap();
    for (what, (took, answer)) in [("slow headers", slow), ("an idle connection", idle)] {
        assert!(
            took < Duration::from_secs(10),
            "{what} held on for {took:?}"
        );
        assert!(!answer.contains("200 OK"), "{what}: {answer}");
    }
    // The server still serves whoever sends a whole request.
    let answer = tokio::task::spawn_blocking(move || {
        exchange(
            addr,
            "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            b"",
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_slow_body_is_408_and_the_connection_closes() {
    let daemon = fixture::Daemon::start();
    let id = daemon.create("shell").await;
    let config = HttpConfig {
        body_read_timeout: Duration::from_millis(300),
        ..HttpConfig::default()
    };
    let served = serve(
        emberd::api::app_with(daemon.manager.clone(), &config),
        emberd::api::DEFAULT_HEADER_READ_TIMEOUT,
    )
    .await;
    let addr = served.addr;
    let (took, answer) = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        let head = format!(
            "POST /sandboxes/{id}/exec HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{{\"code\":"
        );
        stream.write_all(head.as_bytes()).unwrap();
        time_to_close(stream)
    })
    .await
    .unwrap();
    assert!(took < Duration::from_secs(10), "held on for {took:?}");
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{answer}"
    );
    assert!(
        answer.ends_with(r#"{"error":"the request body did not arrive within 300ms"}"#),
        "{answer}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_panicking_request_is_500_and_the_others_carry_on() {
    let (release, released) = tokio::sync::watch::channel(false);
    let routes = Router::new()
        .route(
            "/panic",
            get(|| async {
                panic!("a handler bug");
                #[allow(unreachable_code)]
                "unreachable"
            }),
        )
        .route(
            "/slow",
            get(move || {
                let mut released = released.clone();
                async move {
                    released.wait_for(|r| *r).await.unwrap();
                    "slow done"
                }
            }),
        )
        .route("/ok", get(|| async { "ok" }));
    let served = serve(
        emberd::api::with_edge(routes, &HttpConfig::default()),
        emberd::api::DEFAULT_HEADER_READ_TIMEOUT,
    )
    .await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{}{path}", served.addr);

    // A request in flight while another panics.
    let slow = tokio::spawn(http.get(url("/slow")).send());
    for _ in 0..3 {
        let response = http.get(url("/panic")).send().await.unwrap();
        assert_eq!(response.status(), 500);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body, json!({ "error": "internal error" }));
    }
    release.send(true).unwrap();
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.status(), 200);
    assert_eq!(slow.text().await.unwrap(), "slow done");
    let ok = http.get(url("/ok")).send().await.unwrap();
    assert_eq!(ok.text().await.unwrap(), "ok");
}
