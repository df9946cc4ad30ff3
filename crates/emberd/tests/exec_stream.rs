//! The streamed exec over the fake VM backend, served on a real socket:
//! SSE framing, output as it comes (the fake guest's `block` step holds
//! the program while the test looks), UTF-8 held back across pieces, the
//! unary exec's caps and refusals, deletion mid-stream, and a client that
//! goes away.

mod fixture;
mod served;
mod sse;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use served::serve;
use sse::SseEvent;

use fixture::Options;

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
async fn a_client_that_goes_away_ends_its_streamed_exec() {
    let served = serve(Options::default()).await;
    let id = served.daemon.create("python").await;
    let mut sse = served
        .exec_events(&id, json!({ "code": "echo:up\nblock" }))
        .await;
    assert_eq!(sse.next().await.unwrap().event, "stdout");
    assert_eq!(served.daemon.backend.running_execs(), 1);
    drop(sse);
    fixture::wait_until("the exec ended with its client", || {
        served.daemon.backend.running_execs() == 0
    })
    .await;
}
