//! Streamed exec, background processes, output replay, stdin, terminals
//! and deletion, on real VMs (QEMU/TCG here, or the backend named by
//! `EMBERD_TEST_BACKEND`), driven over HTTP, SSE and WebSocket.
//!
//! These tests need the images built by `make images`; the terminal tests
//! need an agent that offers PTYs. They fail, never skip, when a VM does
//! not come up.

mod sse;
mod support;

use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sse::{Sse, SseEvent};
use support::Api;
use tokio_tungstenite::tungstenite::Message;

/// Longest wait for one event or frame.
const EVENT_BOUND: Duration = Duration::from_secs(60);

async fn start_process(api: &Api, id: &str, body: Value) -> u64 {
    let (status, answer) = api
        .raw(
            Method::POST,
            &format!("/sandboxes/{id}/processes"),
            Some(body.to_string().into_bytes()),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    answer["pid"].as_u64().unwrap()
}

async fn process_info(api: &Api, id: &str, pid: u64) -> Value {
    let (status, info) = api
        .raw(
            Method::GET,
            &format!("/sandboxes/{id}/processes/{pid}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{info}");
    info
}

async fn wait_ended(api: &Api, id: &str, pid: u64) -> Value {
    let deadline = Instant::now() + EVENT_BOUND;
    loop {
        let info = process_info(api, id, pid).await;
        if info["state"] != "running" {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} never ended: {info}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post(api: &Api, path: &str, body: Vec<u8>) -> (u16, String) {
    let response = api
        .http
        .post(format!("{}{path}", api.base))
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn a_streamed_exec_delivers_its_first_line_before_its_exit() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let id = api.create("python").await;
    let code =
        "import time\nfor i in range(5):\n    print(f'line {i}', flush=True)\n    time.sleep(1)\n";
    let mut sse = Sse::open(
        api.http
            .post(format!("{}/sandboxes/{id}/exec", api.base))
            .json(&json!({ "code": code })),
        EVENT_BOUND,
    )
    .await;
    let events = sse.rest().await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.last(), Some(&"exit"), "{events:?}");
    let output: Vec<&SseEvent> = events.iter().filter(|e| e.event == "stdout").collect();
    // The first line came as it was written, on its own (in one piece or
    // more), not with the rest at the end: before the second line and
    // before the exit.
    let first = String::from_utf8(output[0].bytes()).unwrap();
    assert!(
        first.starts_with("line 0") && !first.contains("line 1"),
        "{events:?}"
    );
    let second = output
        .iter()
        .position(|e| String::from_utf8_lossy(&e.bytes()).contains("line 1"))
        .expect("line 1 came");
    let exit = events.last().unwrap();
    assert!(output[0].at < output[second].at && output[second].at < exit.at);
    let all: Vec<u8> = output.iter().flat_map(|e| e.bytes()).collect();
    assert_eq!(
        String::from_utf8(all).unwrap(),
        "line 0\nline 1\nline 2\nline 3\nline 4\n"
    );
    let exit = exit.json();
    assert_eq!(
        (exit["exit_code"].clone(), exit["stdout"].clone()),
        (json!(0), json!(""))
    );
    assert_eq!(api.delete(&id).await, 204);
}

#[tokio::test]
async fn a_background_server_keeps_running_until_term() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let id = api.create("python").await;
    let pid = start_process(
        &api,
        &id,
        json!({ "cmd": ["python3", "-m", "http.server", "8000"], "cwd": "/tmp" }),
    )
    .await;
    let fetch = "import urllib.request\ntry:\n    print(urllib.request.urlopen('http://127.0.0.1:8000/', timeout=5).status)\nexcept Exception as e:\n    print('down', e)\n";
    api.wait_for_output(&id, fetch, "200\n", EVENT_BOUND).await;
    for _ in 0..3 {
        assert_eq!(api.exec(&id, fetch).await.stdout, "200\n");
        assert_eq!(process_info(&api, &id, pid).await["state"], "running");
    }
    let (status, list) = api
        .raw(Method::GET, &format!("/sandboxes/{id}/processes"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        list["processes"][0]["command"],
        json!(["python3", "-m", "http.server", "8000"])
    );

    let (status, body) = post(
        &api,
        &format!("/sandboxes/{id}/processes/{pid}/signal"),
        json!({ "signal": "TERM" }).to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let info = wait_ended(&api, &id, pid).await;
    assert_eq!(info["state"], "killed", "{info}");
    assert_eq!(info["signal"], 15, "{info}");
    // Its log shows the requests it served.
    let (_, page) = api
        .raw(
            Method::GET,
            &format!("/sandboxes/{id}/processes/{pid}/output"),
            None,
        )
        .await;
    let text: String = page["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["data"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(text.contains("GET / HTTP/1.1"), "{text}");

    assert_eq!(api.delete(&id).await, 204);
}

/// What the writer below writes: `LINES` numbered lines.
const LINES: usize = 233_017;
fn expected_output() -> Vec<u8> {
    (0..LINES)
        .flat_map(|i| format!("{i:08}\n").into_bytes())
        .collect()
}

#[tokio::test]
async fn a_fast_writers_log_read_in_pieces_with_reconnects_is_whole() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let id = api.create("python").await;
    let code =
        format!("import sys\nfor i in range({LINES}):\n    sys.stdout.write(f'{{i:08}}\\n')\n");
    let pid = start_process(&api, &id, json!({ "code": code })).await;
    let expected = expected_output();
    assert!(expected.len() > 2 << 20);

    // Pages of 64 KiB, each over a new connection.
    let (mut cursor, mut pages) = (0u64, Vec::new());
    loop {
        let fresh = reqwest::Client::new();
        let page: Value = fresh
            .get(format!(
                "{}/sandboxes/{id}/processes/{pid}/output?cursor={cursor}&limit=65536",
                api.base
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(page["dropped"].is_null(), "{page}");
        for chunk in page["chunks"].as_array().unwrap() {
            assert_eq!(chunk["stream"], "stdout");
            assert_eq!(chunk["cursor"], pages.len() as u64);
            pages.extend_from_slice(chunk["data"].as_str().unwrap().as_bytes());
        }
        cursor = page["next_cursor"].as_u64().unwrap();
        if page["complete"] == true {
            break;
        }
        if page["chunks"].as_array().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(hex(&pages), hex(&expected));

    // Followed as SSE, a few events per connection, resuming by Last-Event-ID.
    let (mut last_id, mut followed, mut connections) = (String::from("0"), Vec::new(), 0);
    'outer: loop {
        connections += 1;
        let mut sse = Sse::open(
            api.http
                .get(format!(
                    "{}/sandboxes/{id}/processes/{pid}/output?follow=true",
                    api.base
                ))
                .header("last-event-id", &last_id),
            EVENT_BOUND,
        )
        .await;
        for _ in 0..5 {
            let event = sse.next().await.expect("the stream ends with exit");
            match event.event.as_str() {
                "stdout" => {
                    followed.extend_from_slice(&event.bytes());
                    last_id = event.id.clone().expect("an id");
                }
                "exit" => break 'outer,
                other => panic!("unexpected {other}: {event:?}"),
            }
        }
    }
    assert!(connections > 3, "{connections}");
    assert_eq!(hex(&followed), hex(&expected));
    assert_eq!(api.delete(&id).await, 204);
}

fn hex(bytes: &[u8]) -> String {
    format!("{:x} ({} bytes)", Sha256::digest(bytes), bytes.len())
}

#[tokio::test]
async fn stdin_reaches_a_background_process_and_eof_ends_it() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let id = api.create("python").await;
    // A program that cannot be started is a 400 with the agent's reason.
    let (status, body) = api
        .raw(
            Method::POST,
            &format!("/sandboxes/{id}/processes"),
            Some(
                json!({ "cmd": ["/no/such/program"] })
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    for cmd in [
        json!(["cat"]),
        json!([
            "python3",
            "-c",
            "import sys; sys.stdout.write(sys.stdin.read().upper())"
        ]),
    ] {
        let pid = start_process(&api, &id, json!({ "cmd": cmd, "stdin": true })).await;
        let path = format!("/sandboxes/{id}/processes/{pid}/stdin");
        assert_eq!(post(&api, &path, b"hello ".to_vec()).await.0, 204);
        assert_eq!(post(&api, &path, b"world\n".to_vec()).await.0, 204);
        assert_eq!(
            post(&api, &format!("{path}?eof=true"), Vec::new()).await.0,
            204
        );
        let info = wait_ended(&api, &id, pid).await;
        assert_eq!(
            (info["state"].clone(), info["exit_code"].clone()),
            (json!("exited"), json!(0))
        );
        let (_, page) = api
            .raw(
                Method::GET,
                &format!("/sandboxes/{id}/processes/{pid}/output"),
                None,
            )
            .await;
        let text = page["chunks"][0]["data"].as_str().unwrap().to_owned();
        assert!(text == "hello world\n" || text == "HELLO WORLD\n", "{page}");
    }
    assert_eq!(api.delete(&id).await, 204);
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn attach(api: &Api, id: &str, pid: u64) -> Ws {
    let url = format!(
        "{}/sandboxes/{id}/processes/{pid}/attach?cursor=0",
        api.base.replace("http://", "ws://")
    );
    tokio_tungstenite::connect_async(url)
        .await
        .expect("attach")
        .0
}

/// Reads binary frames until their text contains `needle`; returns it all.
async fn read_until(ws: &mut Ws, seen: &mut String, needle: &str) {
    let deadline = Instant::now() + EVENT_BOUND;
    while !seen.contains(needle) {
        let frame = tokio::time::timeout_at(deadline.into(), ws.next())
            .await
            .unwrap_or_else(|_| panic!("never saw {needle:?}; saw {seen:?}"));
        match frame {
            Some(Ok(Message::Binary(data))) => seen.push_str(&String::from_utf8_lossy(&data)),
            Some(Ok(Message::Text(text))) => panic!("refused: {text}"),
            other => panic!("the socket ended before {needle:?}: {other:?}; saw {seen:?}"),
        }
    }
}

#[tokio::test]
async fn a_terminal_runs_the_python_repl_over_the_websocket() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let id = api.create("python").await;
    let pid = start_process(
        &api,
        &id,
        json!({ "cmd": ["python3", "-q"], "stdin": true, "pty": { "rows": 24, "cols": 80 } }),
    )
    .await;
    let mut ws = attach(&api, &id, pid).await;
    let mut seen = String::new();
    read_until(&mut ws, &mut seen, ">>> ").await;
    ws.send(Message::Binary(b"1+1\n".to_vec().into()))
        .await
        .unwrap();
    read_until(&mut ws, &mut seen, "\n2\r\n").await;

    let stty = b"import subprocess; subprocess.run(['stty', 'size'])\n".to_vec();
    seen.clear();
    ws.send(Message::Binary(stty.clone().into())).await.unwrap();
    read_until(&mut ws, &mut seen, "24 80").await;
    ws.send(Message::Text(
        r#"{"type":"resize","rows":30,"cols":100}"#.into(),
    ))
    .await
    .unwrap();
    seen.clear();
    ws.send(Message::Binary(stty.into())).await.unwrap();
    read_until(&mut ws, &mut seen, "30 100").await;

    ws.send(Message::Binary(b"exit(3)\n".to_vec().into()))
        .await
        .unwrap();
    let close = loop {
        match tokio::time::timeout(EVENT_BOUND, ws.next())
            .await
            .expect("a close frame")
        {
            Some(Ok(Message::Close(frame))) => break frame.expect("a close reason"),
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(close.reason.as_str(), "exit 3");
    assert_eq!(api.delete(&id).await, 204);
}

#[tokio::test]
async fn deleting_a_sandbox_ends_its_followers_and_websockets_promptly() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let id = api.create("python").await;
    let pid = start_process(
        &api,
        &id,
        json!({ "code": "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.2)\n", "stdin": true }),
    )
    .await;
    let mut sse = Sse::open(
        api.http.get(format!(
            "{}/sandboxes/{id}/processes/{pid}/output?follow=true",
            api.base
        )),
        EVENT_BOUND,
    )
    .await;
    assert_eq!(sse.next().await.unwrap().event, "stdout");
    let mut ws = attach(&api, &id, pid).await;
    let mut seen = String::new();
    read_until(&mut ws, &mut seen, "tick").await;

    assert_eq!(api.delete(&id).await, 204);
    let ended = Instant::now();
    let last = loop {
        match sse.next().await {
            Some(event) if event.event == "stdout" => {}
            other => break other,
        }
    };
    assert_eq!(last.map(|e| e.event), Some("error".to_owned()));
    let close = loop {
        match tokio::time::timeout(EVENT_BOUND, ws.next())
            .await
            .expect("a close frame")
        {
            Some(Ok(Message::Close(frame))) => break frame.expect("a close reason"),
            Some(Ok(Message::Binary(_))) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1001);
    assert!(
        ended.elapsed() < Duration::from_secs(30),
        "{:?}",
        ended.elapsed()
    );
}
