//! Streamed exec, background processes, their output log and the
//! WebSocket attach, over the fake VM backend, served on a real socket (so
//! that SSE framing, flushing and WebSocket upgrades are what a client
//! sees). The fake guest's scripts (`vmm::fake::script`) stand in for
//! programs: `block` holds a process until the test releases it.

mod fixture;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use emberd::sandbox::{Limits, ProcessLimits};
use fixture::{wait_until, wait_until_async, Daemon, Options, BOUND};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// A daemon served on a loopback port.
struct Served {
    daemon: Daemon,
    base: String,
    http: reqwest::Client,
    stop: CancellationToken,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(options: Options) -> Served {
    let daemon = Daemon::with(options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(emberd::api::serve(
        listener,
        daemon.app.clone(),
        Duration::from_secs(10),
        stop.clone(),
    ));
    Served {
        daemon,
        base,
        http: reqwest::Client::new(),
        stop,
    }
}

fn limits(max_running: usize, log_bytes: usize) -> Options {
    Options {
        limits: Limits {
            processes: ProcessLimits {
                max_running,
                log_bytes,
            },
            ..Limits::default()
        },
        ..Options::default()
    }
}

impl Served {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.daemon.call(method, path, body).await
    }

    async fn start(&self, id: &str, body: Value) -> u64 {
        let (status, answer) = self
            .call(
                Method::POST,
                &format!("/sandboxes/{id}/processes"),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        answer["pid"].as_u64().unwrap()
    }

    async fn info(&self, id: &str, pid: u64) -> Value {
        let (status, info) = self
            .call(
                Method::GET,
                &format!("/sandboxes/{id}/processes/{pid}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{info}");
        info
    }

    async fn wait_state(&self, id: &str, pid: u64, state: &str) -> Value {
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            let info = self.info(id, pid).await;
            if info["state"] == state {
                return info;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "process {pid} never became {state}: {info}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stdin(&self, id: &str, pid: u64, query: &str, body: Vec<u8>) -> (u16, String) {
        let response = self
            .http
            .post(format!(
                "{}/sandboxes/{id}/processes/{pid}/stdin{query}",
                self.base
            ))
            .body(body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn page(&self, id: &str, pid: u64, cursor: u64) -> Value {
        let (status, page) = self
            .call(
                Method::GET,
                &format!("/sandboxes/{id}/processes/{pid}/output?cursor={cursor}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page
    }

    /// Opens an SSE stream; fails on a non-200.
    async fn events(&self, request: reqwest::RequestBuilder) -> Sse {
        let response = request
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Sse {
            body: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
        }
    }

    async fn follow(&self, id: &str, pid: u64, query: &str, last_id: Option<&str>) -> Sse {
        let mut request = self.http.get(format!(
            "{}/sandboxes/{id}/processes/{pid}/output?follow=true{query}",
            self.base
        ));
        if let Some(last) = last_id {
            request = request.header("last-event-id", last);
        }
        self.events(request).await
    }

    async fn exec_events(&self, id: &str, body: Value) -> Sse {
        let request = self
            .http
            .post(format!("{}/sandboxes/{id}/exec", self.base))
            .json(&body);
        self.events(request).await
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default)]
struct SseEvent {
    event: String,
    data: String,
    id: Option<String>,
}

impl SseEvent {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    /// The bytes of an output event.
    fn bytes(&self) -> Vec<u8> {
        use base64::Engine as _;
        let data = self.json();
        let text = data["data"].as_str().unwrap();
        if data["base64"] == true {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .unwrap()
        } else {
            text.as_bytes().to_vec()
        }
    }
}

type Body = std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// A minimal SSE reader: events as they arrive, comments skipped.
struct Sse {
    body: Body,
    buffer: Vec<u8>,
}

impl Sse {
    /// The next event, `None` when the stream ended; fails after [`BOUND`].
    async fn next(&mut self) -> Option<SseEvent> {
        tokio::time::timeout(BOUND, self.next_unbounded())
            .await
            .expect("an event or the end within the bound")
    }

    async fn next_unbounded(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8(block).unwrap();
                let mut event = SseEvent::default();
                let mut data = Vec::new();
                for line in text.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        event.event = value.trim_start().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push(value.strip_prefix(' ').unwrap_or(value).to_owned());
                    } else if let Some(value) = line.strip_prefix("id:") {
                        event.id = Some(value.trim_start().to_owned());
                    }
                }
                if event.event.is_empty() && data.is_empty() {
                    continue; // a keep-alive comment
                }
                event.data = data.join("\n");
                return Some(event);
            }
            match self.body.next().await {
                Some(Ok(bytes)) => self.buffer.extend_from_slice(&bytes),
                Some(Err(e)) => panic!("the stream broke: {e}"),
                None => return None,
            }
        }
    }

    /// Every event until the end.
    async fn rest(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}

#[tokio::test]
async fn a_streamed_exec_delivers_output_while_the_program_runs_then_its_exit() {
    let served = serve(Options::default()).await;
    let id = served.daemon.create("python").await;
    let mut sse = served
        .exec_events(
            &id,
            json!({ "code": "echo:first\nstderr:warn\nblock\nbytes:ff00\nexit:3" }),
        )
        .await;
    let first = sse.next().await.unwrap();
    assert_eq!(
        (first.event.as_str(), first.bytes()),
        ("stdout", b"first\n".to_vec())
    );
    let second = sse.next().await.unwrap();
    assert_eq!(
        (second.event.as_str(), second.bytes()),
        ("stderr", b"warn\n".to_vec())
    );
    // Both arrived while the program is still held: nothing buffered them.
    assert_eq!(served.daemon.backend.blocked_execs(), 1);
    served.daemon.backend.release_blocked();
    let rest = sse.rest().await;
    let names: Vec<&str> = rest.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["stdout", "exit"], "{rest:?}");
    assert_eq!(rest[0].bytes(), b"\xff\x00");
    assert_eq!(rest[0].json()["base64"], true);
    let exit = rest[1].json();
    assert_eq!(exit["exit_code"], 3);
    assert_eq!(exit["stdout"], "");
    assert_eq!(exit["stderr"], "");
    assert!(exit["duration_ms"].is_u64());
}

#[tokio::test]
async fn a_utf8_character_split_across_pieces_stays_text() {
    let served = serve(Options::default()).await;
    let id = served.daemon.create("python").await;
    // The euro sign (e2 82 ac) written in two pieces.
    let mut sse = served
        .exec_events(&id, json!({ "code": "bytes:41e282\nsleep:50\nbytes:ac42" }))
        .await;
    let events = sse.rest().await;
    let output: Vec<&SseEvent> = events.iter().filter(|e| e.event == "stdout").collect();
    assert!(
        output.iter().all(|e| e.json()["base64"].is_null()),
        "{events:?}"
    );
    let text: String = output
        .iter()
        .map(|e| e.json()["data"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, "A€B");
}

#[tokio::test]
async fn a_streamed_exec_keeps_the_unary_caps_and_refusals() {
    let served = serve(Options::default()).await;
    let id = served.daemon.create("python").await;
    let mut sse = served
        .exec_events(&id, json!({ "code": "flood:5000000\necho:end" }))
        .await;
    let events = sse.rest().await;
    let streamed: usize = events
        .iter()
        .filter(|e| e.event == "stdout")
        .map(|e| e.bytes().len())
        .sum();
    assert_eq!(streamed, 4 * 1024 * 1024);
    let exit = events.last().unwrap();
    assert_eq!(exit.event, "exit");
    assert_eq!(exit.json()["stdout_truncated"], true);

    // Refusals before the stream starts are plain JSON answers.
    for (path, body, status) in [
        (
            "/sandboxes/sb_000000000000/exec",
            json!({ "code": "echo:x" }),
            404,
        ),
        (
            &format!("/sandboxes/{id}/exec") as &str,
            json!({ "code": "echo:x", "timeout_ms": 3_600_001 }),
            400,
        ),
    ] {
        let response = served
            .http
            .post(format!("{}{path}", served.base))
            .header("accept", "text/event-stream")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn a_streamed_exec_whose_sandbox_is_deleted_ends_with_an_error_event() {
    let served = serve(Options::default()).await;
    let id = served.daemon.create("python").await;
    let mut sse = served
        .exec_events(&id, json!({ "code": "echo:up\nblock" }))
        .await;
    assert_eq!(sse.next().await.unwrap().event, "stdout");
    let (status, _) = served
        .call(Method::DELETE, &format!("/sandboxes/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let rest = sse.rest().await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0].event, "error");
    assert!(rest[0].json()["error"]
        .as_str()
        .unwrap()
        .contains("deleted"));
}

#[tokio::test]
async fn a_process_runs_in_the_background_and_its_output_stays_readable() {
    let served = serve(Options::default()).await;
    let id = served.daemon.create("python").await;
    let pid = served
        .start(&id, json!({ "code": "echo:hello\nstderr:oops\nexit:4" }))
        .await;
    let info = served.wait_state(&id, pid, "exited").await;
    assert_eq!(info["exit_code"], 4);
    assert_eq!(info["output_bytes"], 11);
    // `code` runs with the pack's interpreter.
    assert_eq!(info["command"], json!(["/usr/bin/python3"]));
    assert!(info["ended_at"].is_string());

    let page = served.page(&id, pid, 0).await;
    assert_eq!(
        page["chunks"],
        json!([
            { "stream": "stdout", "data": "hello\n", "cursor": 0 },
            { "stream": "stderr", "data": "oops\n", "cursor": 6 },
        ])
    );
    assert_eq!(page["next_cursor"], 11);
    assert_eq!(page["complete"], true);
    let tail = served.page(&id, pid, 6).await;
    assert_eq!(tail["chunks"][0]["data"], "oops\n");
    // A client may ask for smaller pages.
    let (_, small) = served
        .call(
            Method::GET,
            &format!("/sandboxes/{id}/processes/{pid}/output?cursor=1&limit=3"),
            None,
        )
        .await;
    assert_eq!(
        small["chunks"],
        json!([{ "stream": "stdout", "data": "ell", "cursor": 1 }])
    );
    assert_eq!(
        (small["next_cursor"].clone(), small["complete"].clone()),
        (json!(4), json!(false))
    );

    let (status, list) = served
        .call(Method::GET, &format!("/sandboxes/{id}/processes"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["processes"][0]["pid"], pid);

    // Refusals: a cursor past the end, an unknown process, a bad pid, an
    // unknown sandbox, a bad start.
    let refusals = [
        (
            format!("/sandboxes/{id}/processes/{pid}/output?cursor=12"),
            400,
        ),
        (format!("/sandboxes/{id}/processes/999999"), 404),
        (format!("/sandboxes/{id}/processes/abc"), 400),
        ("/sandboxes/sb_000000000000/processes".to_owned(), 404),
    ];
    for (path, status) in refusals {
        let (got, body) = served.call(Method::GET, &path, None).await;
        assert_eq!(got.as_u16(), status, "{path}: {body}");
        assert!(body["error"].is_string());
    }
    let (status, body) = served
        .call(
            Method::POST,
            &format!("/sandboxes/{id}/processes"),
            Some(json!({ "cmd": ["ls"], "code": "x" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn signals_end_a_process_and_bad_ones_are_refused() {
    let served = serve(Options::default()).await;
    let id = served.daemon.create("python").await;
    let pid = served.start(&id, json!({ "code": "block" })).await;
    let path = format!("/sandboxes/{id}/processes/{pid}/signal");
    let signal =
        |name: &'static str| served.call(Method::POST, &path, Some(json!({ "signal": name })));
    let (status, body) = signal("SIGNOPE").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = signal("TERM").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let info = served.wait_state(&id, pid, "killed").await;
    assert_eq!(
        (info["signal"].clone(), info["exit_code"].clone()),
        (json!(15), json!(143))
    );
    let (status, body) = signal("KILL").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[tokio::test]
async fn stdin_goes_in_and_eof_closes_it() {
    let served = serve(Options::default()).await;
    let id = served.daemon.create("python").await;
    let pid = served
        .start(&id, json!({ "code": "cat\necho:done", "stdin": true }))
        .await;
    assert_eq!(served.stdin(&id, pid, "", b"abc".to_vec()).await.0, 204);
    assert_eq!(served.stdin(&id, pid, "", b"def".to_vec()).await.0, 204);
    assert_eq!(
        served
            .stdin(&id, pid, "", vec![b'x'; 1024 * 1024 + 1])
            .await
            .0,
        413
    );
    assert_eq!(served.stdin(&id, pid, "?eof=true", Vec::new()).await.0, 204);
    served.wait_state(&id, pid, "exited").await;
    let page = served.page(&id, pid, 0).await;
    assert_eq!(page["chunks"][0]["data"], "abcdefdone\n");
    let (status, body) = served.stdin(&id, pid, "", b"late".to_vec()).await;
    assert_eq!(status, 409, "{body}");

    // Without `stdin: true` there is no stdin to write to, and no terminal to resize.
    let pid = served.start(&id, json!({ "code": "block" })).await;
    let (status, body) = served.stdin(&id, pid, "", b"x".to_vec()).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("stdin"), "{body}");
    let (status, body) = served
        .call(
            Method::POST,
            &format!("/sandboxes/{id}/processes/{pid}/resize"),
            Some(json!({ "rows": 30, "cols": 100 })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    served.daemon.backend.release_blocked();
}

#[tokio::test]
async fn a_terminal_needs_an_agent_that_offers_one() {
    let served = serve(Options::default()).await;
    let id = served.daemon.create("python").await;
    let (status, body) = served
        .call(
            Method::POST,
            &format!("/sandboxes/{id}/processes"),
            Some(json!({ "code": "block", "pty": { "rows": 24, "cols": 80 } })),
        )
        .await;
    // The fake agent lists no `pty` capability, like an agent built before terminals.
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("too old"),
        "{body}"
    );
}

#[tokio::test]
async fn running_processes_are_limited_per_sandbox() {
    let served = serve(limits(2, 8 << 20)).await;
    let id = served.daemon.create("python").await;
    let first = served.start(&id, json!({ "code": "block" })).await;
    served.start(&id, json!({ "code": "block" })).await;
    let (status, body) = served
        .call(
            Method::POST,
            &format!("/sandboxes/{id}/processes"),
            Some(json!({ "code": "block" })),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body["error"].as_str().unwrap().contains("--max-processes"));
    served
        .call(
            Method::POST,
            &format!("/sandboxes/{id}/processes/{first}/signal"),
            Some(json!({ "signal": "KILL" })),
        )
        .await;
    served.wait_state(&id, first, "killed").await;
    served
        .start(&id, json!({ "code": "echo:room again" }))
        .await;
    served.daemon.backend.release_blocked();
}

#[tokio::test]
async fn pages_with_cursors_return_every_byte_once_and_say_what_was_dropped() {
    let served = serve(limits(4, 64 * 1024)).await;
    let id = served.daemon.create("python").await;
    // Far more than the log keeps.
    let pid = served.start(&id, json!({ "code": "flood:300000" })).await;
    served.wait_state(&id, pid, "exited").await;
    let page = served.page(&id, pid, 0).await;
    let dropped = page["dropped"].as_u64().unwrap();
    assert!(dropped >= 300_000 - 64 * 1024, "{dropped}");
    assert_eq!(page["chunks"][0]["cursor"], dropped);
    let kept: usize = page["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["data"].as_str().unwrap().len())
        .sum();
    assert_eq!(dropped as usize + kept, 300_000);
    assert_eq!(served.info(&id, pid).await["output_dropped"], dropped);

    // Under the bound, pages of at most 1 MiB follow each other exactly.
    let served = serve(Options::default()).await;
    let id = served.daemon.create("python").await;
    let pid = served
        .start(&id, json!({ "code": "flood:2500000\necho:tail" }))
        .await;
    served.wait_state(&id, pid, "exited").await;
    let (mut cursor, mut total, mut pages) = (0u64, 0usize, 0);
    loop {
        let page = served.page(&id, pid, cursor).await;
        assert_eq!(page["dropped"], Value::Null);
        let mut size = 0;
        for chunk in page["chunks"].as_array().unwrap() {
            assert_eq!(chunk["cursor"], cursor + size as u64);
            size += chunk["data"].as_str().unwrap().len();
        }
        assert!(size <= 1024 * 1024);
        total += size;
        pages += 1;
        cursor = page["next_cursor"].as_u64().unwrap();
        if page["complete"] == true {
            break;
        }
    }
    assert_eq!(total, 2_500_005);
    assert!(pages >= 3, "{pages}");
}

#[tokio::test]
async fn a_follower_that_reconnects_with_its_last_event_id_gets_every_byte_once() {
    let served = serve(Options::default()).await;
    let id = served.daemon.create("python").await;
    let pid = served
        .start(&id, json!({ "code": "echo:one\nblock\necho:two\nexit:2" }))
        .await;
    let mut sse = served.follow(&id, pid, "", None).await;
    let first = sse.next().await.unwrap();
    assert_eq!(first.bytes(), b"one\n");
    assert_eq!(first.id.as_deref(), Some("4"));
    assert_eq!(first.json()["cursor"], 0);
    drop(sse);
    served.daemon.backend.release_blocked();
    served.wait_state(&id, pid, "exited").await;
    // The reconnect names its last id; the query's cursor is overruled.
    let mut sse = served.follow(&id, pid, "&cursor=0", Some("4")).await;
    let rest = sse.rest().await;
    let names: Vec<&str> = rest.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["stdout", "exit"], "{rest:?}");
    assert_eq!(rest[0].bytes(), b"two\n");
    assert_eq!(rest[0].id.as_deref(), Some("8"));
    let exit = rest[1].json();
    assert_eq!(
        (exit["state"].clone(), exit["exit_code"].clone()),
        (json!("exited"), json!(2))
    );
}

#[tokio::test]
async fn a_follower_behind_the_log_is_told_what_it_lost() {
    let served = serve(limits(4, 16 * 1024)).await;
    let id = served.daemon.create("python").await;
    let pid = served.start(&id, json!({ "code": "flood:100000" })).await;
    served.wait_state(&id, pid, "exited").await;
    let mut sse = served.follow(&id, pid, "&cursor=10", None).await;
    let dropped = sse.next().await.unwrap();
    assert_eq!(dropped.event, "dropped");
    let data = dropped.json();
    let cursor = data["cursor"].as_u64().unwrap();
    assert_eq!(data["dropped"].as_u64().unwrap(), cursor - 10);
    assert_eq!(dropped.id, Some(cursor.to_string()));
    let rest = sse.rest().await;
    let bytes: usize = rest
        .iter()
        .filter(|e| e.event == "stdout")
        .map(|e| e.bytes().len())
        .sum();
    assert_eq!(cursor as usize + bytes, 100_000);
    assert_eq!(rest.last().unwrap().event, "exit");
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_frame(ws: &mut Ws) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    tokio::time::timeout(BOUND, ws.next())
        .await
        .expect("a frame within the bound")
}

#[tokio::test]
async fn the_websocket_carries_stdin_in_and_output_out_and_closes_with_the_exit() {
    let served = serve(Options::default()).await;
    let id = served.daemon.create("python").await;
    let pid = served
        .start(
            &id,
            json!({ "code": "echo:ready\ncat\nexit:5", "stdin": true }),
        )
        .await;
    let url = format!(
        "{}/sandboxes/{id}/processes/{pid}/attach?cursor=0",
        served.base.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(
        next_frame(&mut ws).await.unwrap().unwrap(),
        Message::Binary(b"ready\n".to_vec().into())
    );
    ws.send(Message::Binary(b"typed".to_vec().into()))
        .await
        .unwrap();
    // A bad control frame is refused with a text frame; the session goes on.
    ws.send(Message::Text(r#"{"type":"dance"}"#.into()))
        .await
        .unwrap();
    let refusal = next_frame(&mut ws).await.unwrap().unwrap();
    assert!(
        refusal.to_text().unwrap().contains("\"error\""),
        "{refusal:?}"
    );
    ws.send(Message::Text(r#"{"type":"eof"}"#.into()))
        .await
        .unwrap();
    assert_eq!(
        next_frame(&mut ws).await.unwrap().unwrap(),
        Message::Binary(b"typed".to_vec().into())
    );
    let Message::Close(Some(close)) = next_frame(&mut ws).await.unwrap().unwrap() else {
        panic!("expected a close frame")
    };
    assert_eq!(u16::from(close.code), 1000);
    assert_eq!(close.reason.as_str(), "exit 5");

    // A plain GET is no upgrade.
    let (status, body) = served
        .call(
            Method::GET,
            &format!("/sandboxes/{id}/processes/{pid}/attach"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn deleting_a_sandbox_ends_its_followers_and_websockets() {
    let served = serve(Options::default()).await;
    let id = served.daemon.create("python").await;
    let pid = served.start(&id, json!({ "code": "echo:up\nblock" })).await;
    let mut sse = served.follow(&id, pid, "", None).await;
    assert_eq!(sse.next().await.unwrap().event, "stdout");
    let url = format!(
        "{}/sandboxes/{id}/processes/{pid}/attach",
        served.base.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let (status, _) = served
        .call(Method::DELETE, &format!("/sandboxes/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let rest = sse.rest().await;
    assert_eq!(
        rest.last().map(|e| e.event.as_str()),
        Some("error"),
        "{rest:?}"
    );
    let frame = tokio::time::timeout(BOUND, ws.next())
        .await
        .expect("a close frame within the bound");
    let Some(Ok(Message::Close(Some(close)))) = frame else {
        panic!("expected a close frame, got {frame:?}")
    };
    assert_eq!(u16::from(close.code), 1001);
    assert!(close.reason.contains("deleted"), "{}", close.reason);
    let (status, _) = served
        .call(
            Method::GET,
            &format!("/sandboxes/{id}/processes/{pid}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    served.daemon.backend.release_blocked();
    wait_until("the sandbox's VM is gone", || {
        served.daemon.backend.live().is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_running_process_does_not_hold_its_sandbox_but_an_open_follower_does() {
    let served = serve(Options::default()).await;
    let (status, created) = served
        .call(
            Method::POST,
            "/sandboxes",
            Some(json!({ "idle_timeout_s": 1 })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["id"].as_str().unwrap().to_owned();
    let pid = served.start(&id, json!({ "code": "block" })).await;
    let sse = served.follow(&id, pid, "", None).await;
    // Well past the idle timeout, the open stream keeps the sandbox.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, _) = served
        .call(Method::GET, &format!("/sandboxes/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "an open follower holds the sandbox");
    drop(sse);
    // With the stream closed, only the running process is left: the reaper takes it.
    wait_until_async("the idle sandbox is reaped", || async {
        served
            .call(Method::GET, &format!("/sandboxes/{id}"), None)
            .await
            .0
            == StatusCode::NOT_FOUND
    })
    .await;
    served.daemon.backend.release_blocked();
}
