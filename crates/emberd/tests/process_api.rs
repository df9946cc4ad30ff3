//! Background processes over the fake VM backend, served on a real
//! socket: start, list, signals, stdin, the running limit, the output log
//! (pages, cursors, dropped bytes), following with `Last-Event-ID`, the
//! WebSocket attach, deletion, and idle time. The fake guest's scripts
//! (`vmm::fake::script`) stand in for programs: `block` holds a process
//! until the test releases it.

mod fixture;
mod served;
mod sse;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use fixture::{wait_until, wait_until_async, Options};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use served::{limits, next_frame, serve};
use tokio_tungstenite::tungstenite::Message;

use fixture::BOUND;

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

/// A sandbox whose one process prints a line and blocks, with a follower
/// that has read that line and an attached WebSocket.
async fn followed_and_attached(served: &served::Served) -> (String, u64, sse::Sse, served::Ws) {
    let id = served.daemon.create("python").await;
    let pid = served.start(&id, json!({ "code": "echo:up\nblock" })).await;
    let mut sse = served.follow(&id, pid, "", None).await;
    assert_eq!(sse.next().await.unwrap().event, "stdout");
    let url = format!(
        "{}/sandboxes/{id}/processes/{pid}/attach",
        served.base.replace("http://", "ws://")
    );
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    (id, pid, sse, ws)
}

#[tokio::test]
async fn deleting_a_sandbox_ends_its_followers_and_websockets() {
    let served = serve(Options::default()).await;
    let (id, pid, mut sse, mut ws) = followed_and_attached(&served).await;
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

#[tokio::test]
async fn websocket_control_frames_signal_and_refuse_a_resize_without_a_terminal() {
    let served = serve(Options::default()).await;
    let id = served.daemon.create("python").await;
    let pid = served.start(&id, json!({ "code": "block" })).await;
    let url = format!(
        "{}/sandboxes/{id}/processes/{pid}/attach",
        served.base.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::Text(
        r#"{"type":"resize","rows":30,"cols":100}"#.into(),
    ))
    .await
    .unwrap();
    let refusal = next_frame(&mut ws).await.unwrap().unwrap();
    let refusal: Value = serde_json::from_str(refusal.to_text().unwrap()).unwrap();
    assert_eq!(refusal["type"], "error");
    assert!(
        refusal["error"].as_str().unwrap().contains("no terminal"),
        "{refusal}"
    );
    ws.send(Message::Text(
        r#"{"type":"signal","signal":"SIGTERM"}"#.into(),
    ))
    .await
    .unwrap();
    let Some(Ok(Message::Close(Some(close)))) = next_frame(&mut ws).await else {
        panic!("expected a close frame")
    };
    assert_eq!(close.reason.as_str(), "signal 15");
    assert_eq!(served.info(&id, pid).await["state"], "killed");
}

#[tokio::test]
async fn shutdown_ends_followers_and_websockets_at_once() {
    let served = serve(Options::default()).await;
    let (id, pid, mut sse, mut ws) = followed_and_attached(&served).await;
    // What the daemon does first on SIGTERM, before it drains requests.
    served.daemon.manager.close_streams();
    let rest = sse.rest().await;
    let last = rest.last().expect("an event before the end");
    assert_eq!(last.event, "error", "{rest:?}");
    assert!(last.data.contains("shutting down"), "{}", last.data);
    let frame = tokio::time::timeout(BOUND, ws.next())
        .await
        .expect("a close frame within the bound");
    let Some(Ok(Message::Close(Some(close)))) = frame else {
        panic!("expected a close frame, got {frame:?}")
    };
    assert!(close.reason.contains("shutting down"), "{}", close.reason);
    // The process itself runs on until the sandboxes are stopped.
    assert_eq!(served.info(&id, pid).await["state"], "running");
    served.daemon.backend.release_blocked();
}
