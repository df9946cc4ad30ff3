//! The client against a fake daemon on a real TCP listener: every route, and the
//! mapping of error answers and refused connections to `ClientError`.

mod support;

use emberd_api::ExecRequest;
use emberd_client::{Client, ClientError};
use reqwest::StatusCode;
use support::fake_daemon::FakeDaemon;

fn exec_request(code: &str) -> ExecRequest {
    ExecRequest {
        code: code.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn every_route_round_trips() {
    let daemon = FakeDaemon::start().await;
    let client = Client::new(&daemon.addr.to_string()).unwrap();

    client.healthz().await.unwrap();
    let info = client.info().await.unwrap();
    assert_eq!(info.packs, vec!["python".to_string()]);
    assert_eq!(info.boot_path, "cold-boot");

    let id = client.create_sandbox(None).await.unwrap();
    assert!(id.starts_with("sb_"), "{id}");
    let listed = client.list_sandboxes().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    let inspected = client.get_sandbox(&id).await.unwrap();
    assert!(inspected.console_tail.unwrap().contains("ready"));

    let result = client.exec(&id, &exec_request("print(6*7)")).await.unwrap();
    assert_eq!(result.stdout, "42\n");
    assert_eq!(result.exit_code, 0);

    client.delete_sandbox(&id).await.unwrap();
    assert!(client.list_sandboxes().await.unwrap().is_empty());
}

#[tokio::test]
async fn exec_keeps_stdin_exit_code_and_timeout() {
    let daemon = FakeDaemon::start().await;
    let client = Client::new(&daemon.url()).unwrap();
    let id = client.create_sandbox(Some("python")).await.unwrap();

    let echoed = client
        .exec(
            &id,
            &ExecRequest {
                code: "import sys; print(sys.stdin.read().upper())".into(),
                stdin: Some("abc".into()),
                timeout_ms: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(echoed.stdout, "ABC\n");

    let failed = client
        .exec(&id, &exec_request("import sys; sys.exit(3)"))
        .await
        .unwrap();
    assert_eq!(failed.exit_code, 3);

    let timed_out = client
        .exec(
            &id,
            &ExecRequest {
                code: "import time; time.sleep(10)".into(),
                stdin: None,
                timeout_ms: Some(300),
            },
        )
        .await
        .unwrap();
    assert_eq!(timed_out.exit_code, -1);
    assert_eq!(timed_out.error.as_deref(), Some("execution timed out"));
}

#[tokio::test]
async fn error_answers_keep_status_and_message() {
    let daemon = FakeDaemon::start().await;
    let client = Client::new(&daemon.url()).unwrap();

    let missing = client.get_sandbox("sb_000000000000").await.unwrap_err();
    assert_eq!(missing.status(), Some(StatusCode::NOT_FOUND));
    assert!(missing.is_not_found());
    assert_eq!(missing.to_string(), "sandbox not found");

    let deleted = client.delete_sandbox("sb_nope").await.unwrap_err();
    assert_eq!(deleted.to_string(), "sandbox not found");
    let exec = client
        .exec("sb_nope", &exec_request("1"))
        .await
        .unwrap_err();
    assert!(exec.is_not_found());

    let unknown = client.create_sandbox(Some("ruby")).await.unwrap_err();
    assert_eq!(unknown.status(), Some(StatusCode::BAD_REQUEST));
    assert_eq!(unknown.to_string(), r#"unknown language pack: "ruby""#);

    let boot = client.create_sandbox(Some("broken")).await.unwrap_err();
    assert_eq!(boot.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
    assert_eq!(boot.to_string(), "the VM failed to boot");

    let bad_id = client.get_sandbox("..").await.unwrap_err();
    assert!(matches!(bad_id, ClientError::InvalidId(_)), "{bad_id:?}");
}

#[tokio::test]
async fn refused_connection_is_unreachable() {
    // Bind then drop a listener to get a port with nothing behind it.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let client = Client::new(&format!("127.0.0.1:{port}")).unwrap();
    let error = client.info().await.unwrap_err();
    assert!(error.is_unreachable(), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("cannot connect to the daemon at http://127.0.0.1:{port}")
    );
}

#[tokio::test]
async fn non_json_success_body_is_an_invalid_response() {
    let app = axum::Router::new().route("/info", axum::routing::get(|| async { "not json" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = Client::new(&addr.to_string()).unwrap();
    let error = client.info().await.unwrap_err();
    assert!(
        matches!(error, ClientError::InvalidResponse { ref route, .. } if route == "/info"),
        "{error:?}"
    );
    server.abort();
}
