//! MCP over the fake VM backend, in seconds: the Manager-side operations
//! answer in the HTTP API's shapes with the API's error messages, and the
//! daemon's `/mcp` route (through `api::app()`, no socket) serves the tools
//! as JSON-RPC behind the same edge as every route (token, `Host`). The
//! real MCP client over stdio and HTTP, on real VMs, is `tests/mcp/test_mcp.py`.

mod fixture;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use emberd::api::auth::Tokens;
use emberd::api::origin::OriginPolicy;
use emberd::api::{app_with, HttpConfig};
use emberd::mcp::ops_manager::ManagerOps;
use emberd::mcp::{OpsError, SandboxOps};
use emberd_api::ExecRequest;
use fixture::Daemon;
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

fn exec(code: &str) -> ExecRequest {
    ExecRequest {
        code: code.into(),
        stdin: None,
        timeout_ms: None,
        user: None,
    }
}

/// The `error` the HTTP API answers for this request.
async fn api_error(daemon: &Daemon, method: Method, uri: &str, body: Option<Value>) -> String {
    let (status, body) = daemon.call(method, uri, body).await;
    assert!(status.is_client_error(), "{status} {body}");
    body["error"].as_str().unwrap().to_owned()
}

fn message(error: OpsError) -> String {
    match error {
        OpsError::Api(message) => message,
        other => panic!("not an API error: {other:?}"),
    }
}

#[tokio::test]
async fn manager_ops_answer_in_the_apis_shapes() {
    let daemon = Daemon::start();
    let ops = ManagerOps::new(daemon.manager.clone());
    let id = ops.create(Some("python".into())).await.unwrap().id;
    assert_eq!(daemon.listed_ids().await, std::slice::from_ref(&id));

    let mut request = exec("cat\nexit:3");
    request.stdin = Some("in".into());
    let answer = ops.exec(&id, request).await.unwrap();
    let (_, over_http) = daemon
        .call(
            Method::POST,
            &format!("/sandboxes/{id}/exec"),
            Some(json!({ "code": "cat\nexit:3", "stdin": "in" })),
        )
        .await;
    assert_eq!((answer.stdout.as_str(), answer.exit_code), ("in", 3));
    // The same object as over HTTP, timings aside.
    let mut shape = serde_json::to_value(&answer).unwrap();
    let mut over_http = over_http;
    for timing in ["duration_ms", "duration_us", "vm_duration_us"] {
        assert_eq!(
            shape.as_object_mut().unwrap().remove(timing).is_some(),
            over_http.as_object_mut().unwrap().remove(timing).is_some(),
            "{timing}"
        );
    }
    assert_eq!(shape, over_http);

    let mut slow = exec("sleep:5000");
    slow.timeout_ms = Some(100);
    let timed_out = ops.exec(&id, slow).await.unwrap();
    assert_eq!(timed_out.exit_code, -1);
    assert_eq!(timed_out.error.as_deref(), Some("execution timed out"));

    ops.delete(&id).await.unwrap();
    assert!(daemon.listed_ids().await.is_empty());
    daemon.assert_nothing_left();
}

#[tokio::test]
async fn manager_ops_fail_with_the_apis_messages() {
    let daemon = Daemon::start();
    let ops = ManagerOps::new(daemon.manager.clone());
    let gone = message(
        ops.exec("sb_000000000000", exec("echo:x"))
            .await
            .unwrap_err(),
    );
    assert_eq!(gone, "sandbox not found");
    let over_http = api_error(
        &daemon,
        Method::POST,
        "/sandboxes/sb_000000000000/exec",
        Some(json!({ "code": "echo:x" })),
    )
    .await;
    assert_eq!(gone, over_http);
    assert_eq!(
        message(ops.delete("sb_000000000000").await.unwrap_err()),
        "sandbox not found"
    );

    let unknown = message(ops.create(Some("cobol".into())).await.unwrap_err());
    let over_http = api_error(
        &daemon,
        Method::POST,
        "/sandboxes",
        Some(json!({ "language_pack": "cobol" })),
    )
    .await;
    assert_eq!(unknown, over_http);

    let id = ops.create(None).await.unwrap().id;
    let mut too_long = exec("echo:x");
    too_long.timeout_ms = Some(10_000_000);
    let refused = message(ops.exec(&id, too_long).await.unwrap_err());
    let uri = format!("/sandboxes/{id}/exec");
    let body = json!({ "code": "echo:x", "timeout_ms": 10_000_000 });
    assert_eq!(
        refused,
        api_error(&daemon, Method::POST, &uri, Some(body)).await
    );

    // Path checks come before the guest; the fake agent has no `Files`
    // service, and says so as the files routes do.
    let relative = message(ops.read_file(&id, "etc/x", 10).await.unwrap_err());
    assert!(relative.contains("absolute"), "{relative}");
    let files = format!("/sandboxes/{id}/files?path=/tmp/x");
    let no_files = message(ops.read_file(&id, "/tmp/x", 10).await.unwrap_err());
    assert_eq!(
        no_files,
        api_error(&daemon, Method::GET, &files, None).await
    );
    let listing = message(ops.list_files(&id, "/tmp", None).await.unwrap_err());
    assert_eq!(no_files, listing);
    let write = message(
        ops.write_file(&id, "/tmp/x", b"hi".to_vec())
            .await
            .unwrap_err(),
    );
    assert_eq!(no_files, write);
    ops.delete(&id).await.unwrap();
}

/// A JSON-RPC request to `/mcp` as an MCP client sends it.
fn rpc(id: u64, method: &str, params: Value) -> Request<Body> {
    let body = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
    Request::builder()
        .method(Method::POST)
        .uri("/mcp")
        .header(header::HOST, "127.0.0.1:7777")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn send(app: &axum::Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

/// Calls `tool` over `/mcp`; the JSON-RPC result.
async fn call_tool(app: &axum::Router, tool: &str, arguments: Value) -> Value {
    let params = json!({ "name": tool, "arguments": arguments });
    let (status, answer) = send(app, rpc(2, "tools/call", params)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["result"].clone()
}

#[tokio::test]
async fn the_mcp_route_serves_the_tools() {
    let daemon = Daemon::start();
    let app = daemon.app.clone();
    let init = json!({
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": { "name": "test", "version": "1" },
    });
    let (status, answer) = send(&app, rpc(1, "initialize", init)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["result"]["serverInfo"]["name"], "emberd");
    assert!(answer["result"]["instructions"]
        .as_str()
        .unwrap()
        .contains("no persistent contexts"));

    let (_, listed) = send(&app, rpc(2, "tools/list", json!({}))).await;
    let mut names: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "create_sandbox",
            "delete_sandbox",
            "exec_code",
            "list_files",
            "read_file",
            "run_code",
            "write_file"
        ]
    );

    let created = call_tool(&app, "create_sandbox", json!({ "language_pack": "shell" })).await;
    assert_eq!(created["isError"], false);
    let id = created["structuredContent"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ran = call_tool(
        &app,
        "exec_code",
        json!({ "sandbox_id": id, "code": "echo:hi" }),
    )
    .await;
    assert_eq!(ran["structuredContent"]["stdout"], "hi\n");
    assert_eq!(ran["structuredContent"]["exit_code"], 0);
    let text: Value = serde_json::from_str(ran["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(text, ran["structuredContent"]);
    let deleted = call_tool(&app, "delete_sandbox", json!({ "sandbox_id": id })).await;
    assert_eq!(
        deleted["structuredContent"],
        json!({ "id": id, "deleted": true })
    );

    // An API error is a tool error with the API's message, not a protocol error.
    let gone = call_tool(
        &app,
        "exec_code",
        json!({ "sandbox_id": id, "code": "echo:x" }),
    )
    .await;
    assert_eq!(gone["isError"], true);
    assert_eq!(gone["content"][0]["text"], "sandbox not found");
    assert_eq!(
        gone["structuredContent"],
        json!({ "error": "sandbox not found" })
    );
    let binary =
        json!({ "sandbox_id": id, "path": "/tmp/x", "content": "%%", "encoding": "base64" });
    let bad = call_tool(&app, "write_file", binary).await;
    assert_eq!(bad["isError"], true);
    assert!(bad["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("base64"));
}

#[tokio::test]
async fn run_code_deletes_its_sandbox_whatever_the_run_did() {
    let daemon = Daemon::start();
    let app = daemon.app.clone();
    let ran = call_tool(&app, "run_code", json!({ "code": "echo:42\nexit:3" })).await;
    assert_eq!(ran["isError"], false, "{ran}");
    assert_eq!(ran["structuredContent"]["stdout"], "42\n");
    assert_eq!(ran["structuredContent"]["exit_code"], 3);
    // The exec itself is refused: the sandbox still goes.
    let args = json!({ "code": "echo:x", "timeout_ms": 10_000_000 });
    let refused = call_tool(&app, "run_code", args).await;
    assert_eq!(refused["isError"], true);
    assert!(daemon.listed_ids().await.is_empty());
    let unknown = call_tool(
        &app,
        "run_code",
        json!({ "code": "x", "language_pack": "cobol" }),
    )
    .await;
    assert_eq!(unknown["isError"], true);
    assert!(unknown["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("cobol"));
    daemon.assert_nothing_left();
}

#[tokio::test]
async fn the_mcp_route_is_behind_the_token_and_host_checks() {
    let daemon = Daemon::start();
    let config = HttpConfig {
        tokens: Tokens::new(["s3cret"]),
        origins: OriginPolicy::new::<_, &str>([], true),
        ..HttpConfig::default()
    };
    let app = app_with(Arc::clone(&daemon.manager), &config);
    let list = || rpc(1, "tools/list", json!({}));
    let (status, _) = send(&app, list()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let mut with_token = list();
    let bearer = "Bearer s3cret".parse().unwrap();
    with_token
        .headers_mut()
        .insert(header::AUTHORIZATION, bearer);
    let (status, answer) = send(&app, with_token).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["result"]["tools"].as_array().unwrap().len(), 7);

    let mut rebound = list();
    let bearer = "Bearer s3cret".parse().unwrap();
    rebound.headers_mut().insert(header::AUTHORIZATION, bearer);
    let host = "attacker.example:7777".parse().unwrap();
    rebound.headers_mut().insert(header::HOST, host);
    let (status, _) = send(&app, rebound).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let mut foreign = list();
    let bearer = "Bearer s3cret".parse().unwrap();
    foreign.headers_mut().insert(header::AUTHORIZATION, bearer);
    let origin = "https://evil.example".parse().unwrap();
    foreign.headers_mut().insert(header::ORIGIN, origin);
    let (status, _) = send(&app, foreign).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
