//! The HTTP shapes of the interactive routes (streamed exec, processes,
//! followed output, files, attach) against a stub server that checks each
//! request as the wire contract in `emberd-api` says and answers as the
//! daemon would. A request of the wrong shape gets a 400 whose message says
//! what was wrong, which fails the test with that message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use emberd_api::{AttachControl, ExecRequest, FileKind, PtySize, StartProcessRequest};
use emberd_client::{
    AttachEvent, Client, ClientError, ExecEvent, ProcessEvent, PutOptions, StreamKind, UploadBody,
};

const TOKEN: &str = "s3cret";

type Params = Query<HashMap<String, String>>;

#[derive(Clone, Default)]
struct Stub {
    follows: Arc<AtomicUsize>,
    /// What the process routes and the WebSocket received, in order.
    controls: Arc<Log>,
}

#[derive(Default)]
struct Log(std::sync::Mutex<Vec<String>>);

impl Log {
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

fn bad(message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": message.into() })),
    )
        .into_response()
}

/// The 400 for a request without the bearer token.
fn unauthorized(headers: &HeaderMap) -> Option<Response> {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    (auth != Some(&format!("Bearer {TOKEN}"))).then(|| bad(format!("authorization was {auth:?}")))
}

fn sse(body: &'static str) -> Response {
    ([("content-type", "text/event-stream")], body).into_response()
}

async fn exec(
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(request): Json<ExecRequest>,
) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    if id != "sb_1" {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "sandbox not found"})),
        )
            .into_response();
    }
    if headers.get("accept").and_then(|v| v.to_str().ok()) != Some("text/event-stream") {
        return bad("no Accept: text/event-stream");
    }
    if request.code != "print('hi')" {
        return bad(format!("code was {:?}", request.code));
    }
    sse("event: stdout\ndata: {\"data\":\"hi\\n\"}\n\n\
         event: stderr\ndata: {\"data\":\"/w==\",\"base64\":true}\n\n\
         event: exit\ndata: {\"stdout\":\"\",\"stderr\":\"\",\"exit_code\":4,\"duration_ms\":3}\n\n")
}

async fn output(
    State(stub): State<Stub>,
    Path((_, pid)): Path<(String, u32)>,
    Query(q): Params,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    if pid != 7 || q.get("follow").map(String::as_str) != Some("true") {
        return bad(format!("pid {pid}, query {q:?}"));
    }
    let cursor = q.get("cursor").cloned().unwrap_or_default();
    match (stub.follows.fetch_add(1, Ordering::SeqCst), cursor.as_str()) {
        // The connection ends after one event, with no exit.
        (0, "0") => sse("event: stdout\nid: 5\ndata: {\"data\":\"hello\",\"cursor\":0}\n\n"),
        // The resumed stream starts a little early: the client trims it.
        (1, "5") => sse("event: stdout\nid: 11\ndata: {\"data\":\"lo world\",\"cursor\":3}\n\n\
             event: exit\ndata: {\"pid\":7,\"command\":[\"w\"],\"state\":\"exited\",\"exit_code\":0,\"started_at\":\"t\",\"output_bytes\":11,\"output_dropped\":0}\n\n"),
        (n, c) => bad(format!("follow #{n} with cursor {c:?}")),
    }
}

async fn start(headers: HeaderMap, Json(request): Json<StartProcessRequest>) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    if request.cmd != Some(vec!["sleep".into(), "9".into()])
        || request.pty != Some(PtySize { rows: 2, cols: 3 })
    {
        return bad(format!("{request:?}"));
    }
    (StatusCode::CREATED, Json(serde_json::json!({"pid": 7}))).into_response()
}

async fn process_post(
    State(stub): State<Stub>,
    Path((_, pid, action)): Path<(String, u32, String)>,
    Query(q): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    let text = String::from_utf8_lossy(&body);
    let eof = q.get("eof").map(String::as_str).unwrap_or("-");
    stub.controls
        .push(format!("{pid} {action} {text} eof={eof}"));
    StatusCode::NO_CONTENT.into_response()
}

async fn files_put(Query(q): Params, headers: HeaderMap, body: Body) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    let length = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let kind = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let want = [("path", "/data/a b&c"), ("mkdir", "true"), ("mode", "0750")];
    if want
        .iter()
        .any(|(k, v)| q.get(*k).map(String::as_str) != Some(*v))
    {
        return bad(format!("query {q:?}"));
    }
    if length.as_deref() != Some(&bytes.len().to_string()) || kind != "application/octet-stream" {
        return bad(format!(
            "content-length {length:?} of {}, type {kind}",
            bytes.len()
        ));
    }
    if bytes.iter().enumerate().any(|(i, b)| *b != (i % 251) as u8) {
        return bad("the body differs");
    }
    (
        StatusCode::CREATED,
        Json(serde_json::json!({"path": "/data/a b&c", "bytes": bytes.len()})),
    )
        .into_response()
}

async fn files_get(Query(q): Params, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    match q.get("path").map(String::as_str) {
        Some("/etc/motd") => (
            [
                ("x-emberd-kind", "file"),
                ("x-emberd-mode", "0640"),
                ("x-emberd-mtime", "2026-12-02T10:00:00Z"),
                ("content-length", "6"),
            ],
            "hello\n",
        )
            .into_response(),
        Some("/nope") => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "no such file"})),
        )
            .into_response(),
        other => bad(format!("path {other:?}")),
    }
}

async fn attach(
    State(stub): State<Stub>,
    Query(q): Params,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    if q.get("cursor").map(String::as_str) != Some("0") {
        return bad(format!("query {q:?}"));
    }
    ws.on_upgrade(move |mut socket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            match message {
                Message::Binary(bytes) => {
                    let _ = socket.send(Message::Binary(bytes)).await;
                }
                Message::Text(text) => {
                    stub.controls.push(text.to_string());
                    if text.contains("eof") {
                        let frame = CloseFrame {
                            code: 1000,
                            reason: "exit 3".into(),
                        };
                        let _ = socket.send(Message::Close(Some(frame))).await;
                        return;
                    }
                }
                _ => {}
            }
        }
    })
}

async fn serve() -> (Client, Stub) {
    let stub = Stub::default();
    let app = Router::new()
        .route("/sandboxes/{id}/exec", post(exec))
        .route("/sandboxes/{id}/processes", post(start))
        .route("/sandboxes/{id}/processes/{pid}/output", get(output))
        .route("/sandboxes/{id}/processes/{pid}/attach", get(attach))
        .route(
            "/sandboxes/{id}/processes/{pid}/{action}",
            post(process_post),
        )
        .route(
            "/sandboxes/{id}/files",
            get(files_get).put(files_put).head(files_get),
        )
        .with_state(stub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (
        Client::new(&addr.to_string()).unwrap().with_token(TOKEN),
        stub,
    )
}

#[tokio::test]
async fn a_streamed_exec_yields_output_then_the_exit() {
    let (client, _) = serve().await;
    let request = ExecRequest {
        code: "print('hi')".into(),
        ..ExecRequest::default()
    };
    let mut stream = client.exec_stream("sb_1", &request).await.unwrap();
    assert_eq!(
        stream.next().await.unwrap().unwrap(),
        ExecEvent::Stdout(b"hi\n".to_vec())
    );
    assert_eq!(
        stream.next().await.unwrap().unwrap(),
        ExecEvent::Stderr(vec![0xff])
    );
    match stream.next().await.unwrap().unwrap() {
        ExecEvent::Exit(exit) => assert_eq!(exit.exit_code, 4),
        other => panic!("{other:?}"),
    }
    assert!(stream.next().await.is_none());

    let err = client.exec_stream("sb_2", &request).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(err.to_string(), "sandbox not found");
}

#[tokio::test]
async fn a_follow_resumes_from_its_cursor_and_delivers_each_byte_once() {
    let (client, stub) = serve().await;
    let mut follow = client.follow_output("sb_1", 7, 0).await.unwrap();
    let mut text = Vec::new();
    let exit = loop {
        match follow.next().await.unwrap().unwrap() {
            ProcessEvent::Output { stream, data, .. } => {
                assert_eq!(stream, StreamKind::Stdout);
                text.extend(data);
            }
            ProcessEvent::Exit(info) => break info,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(String::from_utf8(text).unwrap(), "hello world");
    assert_eq!(exit.exit_code, Some(0));
    assert_eq!(follow.reconnects(), 1);
    assert_eq!(follow.cursor(), 11);
    assert_eq!(stub.follows.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_follow_gives_up_after_its_reconnects() {
    let (client, _) = serve().await;
    // With no reconnects allowed, the stub's cut connection is the end.
    let mut follow = client
        .follow_output("sb_1", 7, 0)
        .await
        .unwrap()
        .with_max_reconnects(0);
    assert!(matches!(
        follow.next().await,
        Some(Ok(ProcessEvent::Output { .. }))
    ));
    assert!(matches!(
        follow.next().await,
        Some(Err(ClientError::StreamEnded))
    ));
    assert!(follow.next().await.is_none());
}

#[tokio::test]
async fn process_routes_send_the_contracts_bodies() {
    let (client, stub) = serve().await;
    let request = StartProcessRequest {
        cmd: Some(vec!["sleep".into(), "9".into()]),
        pty: Some(PtySize { rows: 2, cols: 3 }),
        ..StartProcessRequest::default()
    };
    assert_eq!(client.start_process("sb_1", &request).await.unwrap(), 7);
    client.signal_process("sb_1", 7, "TERM").await.unwrap();
    client
        .write_stdin("sb_1", 7, b"raw\x00bytes".to_vec())
        .await
        .unwrap();
    client.close_stdin("sb_1", 7).await.unwrap();
    client
        .resize_process(
            "sb_1",
            7,
            PtySize {
                rows: 40,
                cols: 100,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        stub.controls.lines(),
        [
            r#"7 signal {"signal":"TERM"} eof=-"#,
            "7 stdin raw\0bytes eof=-",
            "7 stdin  eof=true",
            r#"7 resize {"rows":40,"cols":100} eof=-"#,
        ]
    );
}

#[tokio::test]
async fn uploads_stream_with_their_length_and_downloads_keep_their_headers() {
    let (client, _) = serve().await;
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 7).map(|i| (i % 251) as u8).collect();
    let len = data.len() as u64;
    let options = PutOptions {
        mkdir: true,
        mode: Some(0o750),
        user: None,
    };
    let body = UploadBody::from_reader(std::io::Cursor::new(data), Some(len));
    let written = client
        .put_file("sb_1", "/data/a b&c", body, &options)
        .await
        .unwrap();
    assert_eq!(written.bytes, len);

    let stat = client.stat_file("sb_1", "/etc/motd").await.unwrap();
    assert_eq!(stat.kind, Some(FileKind::File));
    assert_eq!(stat.mode, Some(0o640));
    assert_eq!(stat.size, Some(6));
    let download = client.get_file("sb_1", "/etc/motd").await.unwrap();
    assert_eq!(download.content_length(), Some(6));
    let mut out = Vec::new();
    assert_eq!(download.write_to(&mut out, None).await.unwrap(), 6);
    assert_eq!(out, b"hello\n");

    let err = client.get_file("sb_1", "/nope").await.unwrap_err();
    assert_eq!(
        (err.status(), err.to_string()),
        (Some(StatusCode::NOT_FOUND), "no such file".into())
    );
}

#[tokio::test]
async fn attach_carries_stdin_output_controls_and_the_exit() {
    let (client, stub) = serve().await;
    let mut attach = client.attach("sb_1", 7, Some(0)).await.unwrap();
    attach.send_stdin(b"typed").await.unwrap();
    assert_eq!(
        attach.next().await.unwrap().unwrap(),
        AttachEvent::Output(b"typed".to_vec())
    );
    attach
        .send_control(&AttachControl::Resize {
            rows: 50,
            cols: 120,
        })
        .await
        .unwrap();
    attach.send_control(&AttachControl::Eof).await.unwrap();
    match attach.next().await.unwrap().unwrap() {
        AttachEvent::End(end) => assert_eq!(end.exit_code(), Some(3)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        stub.controls.lines(),
        [
            r#"{"type":"resize","rows":50,"cols":120}"#,
            r#"{"type":"eof"}"#
        ]
    );

    // Without the token the upgrade is refused with the daemon's answer.
    let anonymous = Client::new(client.base_url().as_str()).unwrap();
    let err = anonymous.attach("sb_1", 7, Some(0)).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST), "{err:?}");
}
