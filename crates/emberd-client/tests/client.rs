//! The client against the real daemon router over the fake VM backend, on
//! a real TCP listener: every route, and the mapping of error answers and
//! refused connections to `ClientError`.

mod support;

use emberd_api::{ExecRequest, SandboxState};
use emberd_client::{Client, ClientError};
use reqwest::StatusCode;
use support::daemon::Daemon;

fn exec_request(code: &str) -> ExecRequest {
    ExecRequest {
        code: code.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn every_route_round_trips() {
    let daemon = Daemon::start().await;
    let client = Client::new(&daemon.addr.to_string()).unwrap();

    client.healthz().await.unwrap();
    let info = client.info().await.unwrap();
    assert_eq!(info.packs, ["python", "shell"]);
    assert_eq!(info.boot_path, "cold-boot");
    assert_eq!(info.backend.as_deref(), Some("fake"));
    assert_eq!(info.pool_ready, None);

    let id = client.create_sandbox(None).await.unwrap();
    assert!(id.starts_with("sb_"), "{id}");
    let listed = client.list_sandboxes().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].pack, "python");
    assert_eq!(listed[0].state, SandboxState::Running);
    assert_eq!(listed[0].console_tail, None);
    let inspected = client.get_sandbox(&id).await.unwrap();
    let console = inspected.console_tail.unwrap();
    assert!(console.contains("emberd-init: ready"), "{console}");
    let vm = daemon.backend.vm(inspected.vmm_pid.unwrap()).unwrap();
    assert_eq!(vm.identity().as_deref(), Some(id.as_str()));

    let result = client.exec(&id, &exec_request("echo:42")).await.unwrap();
    assert_eq!(result.stdout, "42\n");
    assert_eq!(result.exit_code, 0);
    assert!(result.duration_us.is_some());

    client.delete_sandbox(&id).await.unwrap();
    assert!(client.list_sandboxes().await.unwrap().is_empty());
    assert!(!vm.is_live());
    daemon.stop().await;
}

#[tokio::test]
async fn exec_keeps_stdin_exit_code_and_timeout() {
    let daemon = Daemon::start().await;
    let client = Client::new(&daemon.url()).unwrap();
    let id = client.create_sandbox(Some("shell")).await.unwrap();

    let echoed = client
        .exec(
            &id,
            &ExecRequest {
                code: "cat".into(),
                stdin: Some("abc".into()),
                timeout_ms: None,
                user: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(echoed.stdout, "abc");

    let failed = client
        .exec(&id, &exec_request("stderr:no\nexit:3"))
        .await
        .unwrap();
    assert_eq!(failed.exit_code, 3);
    assert_eq!(failed.stderr, "no\n");
    assert_eq!(failed.error, None);

    let timed_out = client
        .exec(
            &id,
            &ExecRequest {
                code: "echo:partial\nblock".into(),
                stdin: None,
                timeout_ms: Some(300),
                user: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(timed_out.exit_code, -1);
    assert_eq!(timed_out.error.as_deref(), Some("execution timed out"));
    assert_eq!(timed_out.stdout, "partial\n");
    daemon.stop().await;
}

#[tokio::test]
async fn error_answers_keep_status_and_message() {
    let daemon = Daemon::start().await;
    let client = Client::new(&daemon.url()).unwrap();

    let missing = client.get_sandbox("sb_000000000000").await.unwrap_err();
    assert_eq!(missing.status(), Some(StatusCode::NOT_FOUND));
    assert!(missing.is_not_found());
    assert_eq!(missing.to_string(), "sandbox not found");

    let deleted = client.delete_sandbox("sb_nope").await.unwrap_err();
    assert_eq!(deleted.to_string(), "sandbox not found");
    let exec = client
        .exec("sb_nope", &exec_request("echo:x"))
        .await
        .unwrap_err();
    assert!(exec.is_not_found());

    let unknown = client.create_sandbox(Some("ruby")).await.unwrap_err();
    assert_eq!(unknown.status(), Some(StatusCode::BAD_REQUEST));
    assert_eq!(unknown.to_string(), r#"unknown language pack: "ruby""#);

    let id = client.create_sandbox(None).await.unwrap();
    let too_long = client
        .exec(
            &id,
            &ExecRequest {
                code: "echo:x".into(),
                stdin: None,
                timeout_ms: Some(3_600_001),
                user: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(too_long.status(), Some(StatusCode::BAD_REQUEST));
    assert_eq!(
        too_long.to_string(),
        "invalid request: timeout_ms must be at most 3600000"
    );

    daemon.backend.fail_boots(true);
    let boot = client.create_sandbox(Some("python")).await.unwrap_err();
    assert_eq!(boot.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
    let message = boot.to_string();
    assert!(message.starts_with("sandbox failed to boot"), "{message}");
    assert!(message.contains("told to fail boots"), "{message}");

    let bad_id = client.get_sandbox("..").await.unwrap_err();
    assert!(matches!(bad_id, ClientError::InvalidId(_)), "{bad_id:?}");
    daemon.stop().await;
}

#[tokio::test]
async fn the_token_goes_as_a_bearer_header() {
    const TOKEN: &str = "client-test-token-0123456789";
    let http = emberd::api::HttpConfig {
        tokens: emberd::api::auth::Tokens::new([TOKEN]),
        ..emberd::api::HttpConfig::default()
    };
    let daemon = Daemon::start_with(&http).await;
    let without = Client::new(&daemon.url()).unwrap();
    let err = without.list_sandboxes().await.unwrap_err();
    assert!(err.is_unauthorized(), "{err:?}");
    assert_eq!(err.to_string(), "missing or invalid bearer token");
    let wrong = Client::new(&daemon.url())
        .unwrap()
        .with_token("not-the-token-0123456789");
    assert!(wrong.info().await.unwrap_err().is_unauthorized());

    let client = Client::new(&daemon.url()).unwrap().with_token(TOKEN);
    assert!(!format!("{client:?}").contains(TOKEN));
    let id = client.create_sandbox(None).await.unwrap();
    client.delete_sandbox(&id).await.unwrap();
    daemon.stop().await;
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

/// A streamed exec against the real router: output events in order, then
/// the exit with empty stdout/stderr (the same outcome as the unary exec).
#[tokio::test]
async fn a_streamed_exec_delivers_output_then_the_exit() {
    let daemon = Daemon::start().await;
    let client = Client::new(&daemon.url()).unwrap();
    let id = client.create_sandbox(Some("shell")).await.unwrap();

    let stream = client
        .exec_stream(&id, &exec_request("echo:42\nstderr:no\nexit:3"))
        .await
        .unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let exit = stream
        .drain(|b| out.extend_from_slice(b), |b| err.extend_from_slice(b))
        .await
        .unwrap();
    assert_eq!(
        (out.as_slice(), err.as_slice()),
        (&b"42\n"[..], &b"no\n"[..])
    );
    assert_eq!(exit.exit_code, 3);
    assert!(exit.stdout.is_empty() && exit.stderr.is_empty());

    let missing = client
        .exec_stream("sb_nope", &exec_request("echo:x"))
        .await
        .unwrap_err();
    assert!(missing.is_not_found(), "{missing:?}");
    daemon.stop().await;
}
