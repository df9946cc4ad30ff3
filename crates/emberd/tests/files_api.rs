//! The files routes through `api::app()` over the fake VM backend: what the
//! daemon refuses by itself, before any guest work (bad paths, bad queries,
//! unknown sandboxes, announced transfers over the limit), and that an agent
//! without the `Files` service is a clear 409, never a 500. The transfers
//! themselves are tested on real VMs (`tests/files.rs`).

mod fixture;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use fixture::Daemon;
use serde_json::Value;
use tower::ServiceExt as _;

fn error_of(bytes: &[u8]) -> String {
    let value: Value = serde_json::from_slice(bytes)
        .unwrap_or_else(|_| panic!("non-JSON: {}", String::from_utf8_lossy(bytes)));
    value["error"].as_str().unwrap().to_owned()
}

/// A body that never sends a byte: a route that reads it would hang.
fn never() -> Body {
    Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>())
}

#[tokio::test]
async fn hostile_paths_are_refused_before_the_guest_sees_them() {
    let daemon = Daemon::start();
    let id = daemon.create("python").await;
    let long = format!("/{}", "a".repeat(4096));
    for (query, why) in [
        ("path=relative/x", "absolute"),
        ("path=/tmp/../etc/passwd", "\"..\""),
        ("path=..", "absolute"),
        ("path=/tmp/a%00b", "NUL"),
        (&*format!("path={long}"), "bytes long"),
        ("", "required"),
    ] {
        for method in [Method::GET, Method::PUT, Method::DELETE, Method::HEAD] {
            let uri = format!("/sandboxes/{id}/files?{query}");
            let (status, bytes) = daemon.call_raw(method.clone(), &uri, Body::from("x")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {query:.30}");
            if method != Method::HEAD {
                let message = error_of(&bytes);
                assert!(
                    message.starts_with("invalid path: ") && message.contains(why),
                    "{method} {query:.30}: {message}"
                );
            }
        }
        let uri = format!("/sandboxes/{id}/files/list?{query}");
        let (status, _) = daemon.call_raw(Method::GET, &uri, Body::empty()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "list {query:.30}");
    }
    let uri = format!("/sandboxes/{id}/files?path=/");
    let (status, bytes) = daemon.call_raw(Method::DELETE, &uri, Body::empty()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&bytes).contains("root directory"));
}

#[tokio::test]
async fn bad_queries_are_400_and_unknown_sandboxes_404() {
    let daemon = Daemon::start();
    let id = daemon.create("python").await;
    for (method, query) in [
        (Method::PUT, "path=/tmp/x&mode=9"),
        (Method::PUT, "path=/tmp/x&mode=70000"),
        (Method::PUT, "path=/tmp/x&user=bob"),
        (Method::PUT, "path=/tmp/x&mkdir=maybe"),
        (Method::GET, "path=/tmp/x&format=zip"),
        (Method::GET, "path=/tmp/x&colour=blue"),
        (Method::DELETE, "path=/tmp/x&recursive=1"),
    ] {
        let uri = format!("/sandboxes/{id}/files?{query}");
        let (status, bytes) = daemon.call_raw(method.clone(), &uri, Body::from("x")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {query}");
        assert!(error_of(&bytes).starts_with("invalid query: "), "{query}");
    }
    let uri = format!("/sandboxes/{id}/files/list?path=/tmp&depth=9");
    let (status, bytes) = daemon.call_raw(Method::GET, &uri, Body::empty()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&bytes), "invalid request: depth must be at most 8");

    // An unknown sandbox: 404 on every route, an upload's body unread.
    for (method, uri) in [
        (Method::GET, "/sandboxes/sb_000000000000/files?path=/tmp/x"),
        (Method::HEAD, "/sandboxes/sb_000000000000/files?path=/tmp/x"),
        (
            Method::DELETE,
            "/sandboxes/sb_000000000000/files?path=/tmp/x",
        ),
        (
            Method::GET,
            "/sandboxes/sb_000000000000/files/list?path=/tmp",
        ),
        (Method::PUT, "/sandboxes/sb_000000000000/files?path=/tmp/x"),
    ] {
        let (status, _) = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            daemon.call_raw(method.clone(), uri, never()),
        )
        .await
        .expect("answered without reading the body");
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}");
    }
}

#[tokio::test]
async fn an_announced_upload_over_the_limit_is_refused_unread() {
    let daemon = Daemon::start();
    let id = daemon.create("python").await;
    let request = Request::builder()
        .method(Method::PUT)
        .uri(format!("/sandboxes/{id}/files?path=/tmp/huge"))
        .header("content-length", (3u64 << 30).to_string())
        .header("expect", "100-continue")
        .body(never())
        .unwrap();
    let response = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        daemon.app.clone().oneshot(request),
    )
    .await
    .expect("answered without reading the body")
    .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.headers()["connection"], "close");
}

#[tokio::test]
async fn an_agent_without_the_files_service_is_a_clear_409() {
    // The fake agent serves `Agent` only, like an agent that predates `Files`.
    let daemon = Daemon::start();
    let id = daemon.create("python").await;
    for (method, uri, body) in [
        (
            Method::GET,
            format!("/sandboxes/{id}/files?path=/tmp/x"),
            Body::empty(),
        ),
        (
            Method::GET,
            format!("/sandboxes/{id}/files/list?path=/tmp"),
            Body::empty(),
        ),
        (
            Method::DELETE,
            format!("/sandboxes/{id}/files?path=/tmp/x"),
            Body::empty(),
        ),
        (
            Method::PUT,
            format!("/sandboxes/{id}/files?path=/tmp/x"),
            Body::from(vec![7u8; 1 << 20]),
        ),
    ] {
        let (status, bytes) = daemon.call_raw(method.clone(), &uri, body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{method} {uri}");
        assert!(
            error_of(&bytes).contains("guest image is too old to support the files API"),
            "{method} {uri}: {}",
            error_of(&bytes)
        );
    }
    // The sandbox still runs code.
    daemon.exec_ok(&id, "print(1)").await;
}
