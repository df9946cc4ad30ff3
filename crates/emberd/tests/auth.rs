//! Who may call the API: bearer tokens, the `Origin` check and the `Host`
//! check (DNS rebinding), through `api::app_with()` over the fake backend;
//! and the start-up refusal of a non-loopback address without a token,
//! through the real `emberd serve`.

mod fixture;

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt as _;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use emberd::api::auth::Tokens;
use emberd::api::origin::OriginPolicy;
use emberd::api::HttpConfig;
use emberd_harness::{Daemon as RealDaemon, HarnessError};
use fixture::Daemon;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const TOKEN: &str = "test-token-0123456789abcdef";

/// A router with `TOKEN` configured, on a bind that is loopback or not.
fn app(daemon: &Daemon, loopback_bind: bool, allowed_origins: &[&str]) -> Router {
    let config = HttpConfig {
        tokens: Tokens::new([TOKEN]),
        origins: OriginPolicy::new(allowed_origins, loopback_bind),
        ..HttpConfig::default()
    };
    emberd::api::app_with(daemon.manager.clone(), &config)
}

/// Sends `method path` with `headers`; the status, the headers and the JSON body.
async fn send(
    app: &Router,
    method: Method,
    path: &str,
    headers: &[(header::HeaderName, &str)],
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, headers, body)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn every_route_but_healthz_needs_the_token() {
    let daemon = Daemon::start();
    let app = app(&daemon, true, &[]);
    let wrong = bearer("wrong-token-0123456789abcdef");
    let routes = [
        (Method::GET, "/info"),
        (Method::GET, "/sandboxes"),
        (Method::POST, "/sandboxes"),
        (Method::GET, "/sandboxes/sb_000000000000"),
        (Method::DELETE, "/sandboxes/sb_000000000000"),
        (Method::POST, "/sandboxes/sb_000000000000/exec"),
        // An unknown route says nothing of the routes behind the token.
        (Method::GET, "/nope"),
    ];
    for (method, path) in routes {
        for headers in [
            vec![],
            vec![(header::AUTHORIZATION, wrong.as_str())],
            vec![(header::AUTHORIZATION, TOKEN)],
            vec![(header::AUTHORIZATION, "Basic dXNlcjpwYXNz")],
        ] {
            let (status, response_headers, body) = send(&app, method.clone(), path, &headers).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {headers:?}"
            );
            assert_eq!(body, json!({ "error": "missing or invalid bearer token" }));
            assert_eq!(response_headers[header::WWW_AUTHENTICATE], "Bearer");
        }
    }
    assert_eq!(
        daemon.manager.list().len(),
        0,
        "a refused create made a sandbox"
    );

    // healthz is open, so that supervisors need no secret.
    let (status, _, body) = send(&app, Method::GET, "/healthz", &[]).await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "status": "ok" })));

    // With the token, every route works as before.
    let auth = bearer(TOKEN);
    let with_token = [(header::AUTHORIZATION, auth.as_str())];
    let (status, _, info) = send(&app, Method::GET, "/info", &with_token).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["backend"], "fake");
    let (status, _, created) = send(&app, Method::POST, "/sandboxes", &with_token).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap();
    let (status, _, list) = send(&app, Method::GET, "/sandboxes", &with_token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["sandboxes"][0]["id"], id);
    let (status, _, _) = send(
        &app,
        Method::DELETE,
        &format!("/sandboxes/{id}"),
        &with_token,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    daemon.stop().await;
}

#[tokio::test]
async fn a_foreign_origin_is_403_on_any_bind_even_with_the_token() {
    let daemon = Daemon::start();
    let auth = bearer(TOKEN);
    for loopback_bind in [true, false] {
        let app = app(&daemon, loopback_bind, &["https://dash.example"]);
        for path in ["/healthz", "/info", "/sandboxes"] {
            for origin in ["https://evil.example", "null", "http://localhost:8000"] {
                let (status, _, body) = send(
                    &app,
                    Method::POST,
                    path,
                    &[(header::ORIGIN, origin), (header::AUTHORIZATION, &auth)],
                )
                .await;
                assert_eq!(status, StatusCode::FORBIDDEN, "{path} from {origin}");
                assert_eq!(
                    body,
                    json!({ "error": "requests from this Origin are not allowed" })
                );
            }
        }
        assert_eq!(
            daemon.manager.list().len(),
            0,
            "a refused create made a sandbox"
        );
        // An allowed origin, and no origin at all (curl, scripts), pass.
        for headers in [
            vec![
                (header::ORIGIN, "https://dash.example"),
                (header::AUTHORIZATION, auth.as_str()),
            ],
            vec![(header::AUTHORIZATION, auth.as_str())],
        ] {
            let (status, _, body) = send(&app, Method::GET, "/info", &headers).await;
            assert_eq!(status, StatusCode::OK, "{headers:?}: {body}");
        }
    }
    daemon.stop().await;
}

#[tokio::test]
async fn a_rebinding_host_is_403_on_a_loopback_bind() {
    let daemon = Daemon::start();
    let auth = bearer(TOKEN);
    let loopback = app(&daemon, true, &[]);
    for host in ["attacker.example", "attacker.example:7777", "10.1.2.3:7777"] {
        for path in ["/healthz", "/info"] {
            let (status, _, body) = send(
                &loopback,
                Method::GET,
                path,
                &[(header::HOST, host), (header::AUTHORIZATION, &auth)],
            )
            .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path} for Host {host}");
            assert_eq!(
                body,
                json!({ "error": "the Host header does not name this daemon's loopback address" })
            );
        }
    }
    for host in [
        "localhost",
        "localhost:7777",
        "127.0.0.1:7777",
        "[::1]:7777",
    ] {
        let (status, _, _) = send(
            &loopback,
            Method::GET,
            "/info",
            &[(header::HOST, host), (header::AUTHORIZATION, &auth)],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "Host {host}");
    }
    // On a public bind clients name the host as they like; the token guards it.
    let public = app(&daemon, false, &[]);
    let (status, _, _) = send(
        &public,
        Method::GET,
        "/info",
        &[
            (header::HOST, "emberd.internal:7777"),
            (header::AUTHORIZATION, &auth),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    daemon.stop().await;
}

#[tokio::test]
async fn without_a_token_the_loopback_daemon_stays_open_to_plain_clients() {
    // The original clients send neither a token nor an Origin.
    let daemon = Daemon::start();
    let app = emberd::api::app(daemon.manager.clone());
    let (status, _, _) = send(
        &app,
        Method::GET,
        "/info",
        &[(header::HOST, "127.0.0.1:7777")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(
        &app,
        Method::GET,
        "/info",
        &[(header::ORIGIN, "https://evil.example")],
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "no token does not mean no Origin check"
    );
    daemon.stop().await;
}

/// `emberd serve` with no token from the test's own environment.
fn builder() -> emberd_harness::DaemonBuilder {
    RealDaemon::builder(env!("CARGO_BIN_EXE_emberd"))
        .env_remove("EMBERD_TOKEN")
        .env_remove("EMBERD_TOKEN_FILE")
}

/// Starts `emberd serve` on every address; its error when it does not serve.
fn start_public(builder: emberd_harness::DaemonBuilder) -> String {
    let empty_data = tempfile::tempdir().unwrap();
    let result = builder
        .bind_ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        .data_dir(empty_data.path())
        .start();
    match result {
        Err(HarnessError::Exited { status, log }) => {
            assert!(!status.success(), "{log}");
            log
        }
        other => panic!("emberd served on 0.0.0.0 with an empty data dir: {other:?}"),
    }
}

#[test]
fn a_public_address_without_a_token_is_refused_at_start() {
    let log = start_public(builder());
    assert!(
        log.contains("refusing to serve on 0.0.0.0:") && log.contains("without authentication"),
        "{log}"
    );
    assert!(log.contains("--token-file or EMBERD_TOKEN"), "{log}");

    // With a token the same start gets past the check (and stops at the
    // empty data dir, which is not this test's business).
    let log = start_public(builder().token(TOKEN));
    assert!(!log.contains("without authentication"), "{log}");
    assert!(log.contains("no guest images"), "{log}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, format!("# ops\n{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let log = start_public(builder().arg("--token-file").arg(&file));
    assert!(!log.contains("without authentication"), "{log}");

    // A token file anyone can read is no secret.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = start_public(builder().arg("--token-file").arg(&file));
    assert!(log.contains("is readable by every user"), "{log}");
}

#[tokio::test]
async fn an_allowed_origin_gets_cors_answers_and_still_needs_the_token() {
    let daemon = Daemon::start();
    let app = app(&daemon, true, &["https://dash.example"]);
    let preflight = [
        (header::ORIGIN, "https://dash.example"),
        (header::ACCESS_CONTROL_REQUEST_METHOD, "POST"),
        (
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            "authorization,content-type",
        ),
    ];
    // A preflight carries no token; it is answered for the allowed origin only.
    let (status, headers, _) = send(&app, Method::OPTIONS, "/sandboxes", &preflight).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://dash.example"
    );
    let allowed_headers = headers[header::ACCESS_CONTROL_ALLOW_HEADERS]
        .to_str()
        .unwrap();
    assert!(
        allowed_headers.contains("authorization"),
        "{allowed_headers}"
    );
    let mut foreign = preflight;
    foreign[0].1 = "https://evil.example";
    let (status, headers, _) = send(&app, Method::OPTIONS, "/sandboxes", &foreign).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());

    let origin = (header::ORIGIN, "https://dash.example");
    let (status, _, _) = send(&app, Method::GET, "/info", std::slice::from_ref(&origin)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "CORS is no way around the token"
    );
    let auth = bearer(TOKEN);
    let (status, headers, _) = send(
        &app,
        Method::GET,
        "/info",
        &[origin, (header::AUTHORIZATION, &auth)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://dash.example"
    );
    daemon.stop().await;
}
