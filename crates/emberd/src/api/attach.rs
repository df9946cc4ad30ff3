//! `GET /sandboxes/{id}/processes/{pid}/attach`: a process over a
//! WebSocket. Binary frames in are stdin; its output (stdout and stderr)
//! goes out as binary frames, from `?cursor=` when given, else from the
//! current end; text frames in are [`AttachControl`] JSON. The process's
//! end closes the socket (code 1000, the reason names the exit), and so
//! does its sandbox's deletion (code 1001). A client that goes away leaves
//! the process running.

use std::collections::HashMap;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use emberd_api::{AttachControl, AttachNotice, ErrorBody};
use futures::{SinkExt as _, StreamExt as _};

use super::processes::{parse_pid, query_u64};
use super::{ApiError, AppState};
use crate::sandbox::process::{FollowEvent, ProcessFollower, ProcessHandle, ProcessStatus};
use crate::sandbox::SandboxError;

/// Close code of a process that ended.
const CLOSE_NORMAL: u16 = 1000;
/// Close code of a sandbox that went away.
const CLOSE_GOING_AWAY: u16 = 1001;
/// The longest close reason a frame carries (125 bytes less the code).
const MAX_REASON_BYTES: usize = 123;
/// Largest message taken from the client.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// The process over a WebSocket: binary frames in are stdin, its output
/// goes out as binary frames; text frames in are `AttachControl` JSON,
/// text frames out `AttachNotice` JSON.
#[utoipa::path(get, path = "/sandboxes/{id}/processes/{pid}/attach", tag = "processes", operation_id = "attach_process",
    params(("id" = String, Path, description = "The sandbox's id"), ("pid" = u32, Path, description = "The process's pid in the guest"),
        ("cursor" = Option<u64>, Query, description = "Send output from this byte offset (from the current end when absent)"),
        ("upgrade" = String, Header, pattern = "^websocket$", description = "websocket"),
        ("connection" = String, Header, pattern = "^Upgrade$", description = "Upgrade"),
        ("sec-websocket-version" = String, Header, pattern = "^13$", description = "13"),
        ("sec-websocket-key" = String, Header, pattern = "^[A-Za-z0-9+/]{22}==$", description = "The client's WebSocket key (16 bytes, base64)")),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade request, a pid that is not a number, a bad cursor or one beyond the end", body = ErrorBody),
        (status = 404, description = "No such sandbox or process", body = ErrorBody),
    ))]
pub(super) async fn attach(
    State(state): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let handle = state.manager.process(&id, parse_pid(&pid)?)?;
    let cursor = query_u64(&query, "cursor")?;
    let upgrade = upgrade.map_err(|_| ApiError::WebSocketRequired)?;
    let follower = handle.follow(cursor)?;
    Ok(upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| session(socket, handle, follower)))
}

/// Why the loop ended, and what the client is told.
enum End {
    Close(u16, String),
    ClientGone,
}

async fn session(socket: WebSocket, handle: ProcessHandle, mut follower: ProcessFollower) {
    let (mut tx, mut rx) = socket.split();
    let end = loop {
        tokio::select! {
            event = follower.next() => match event {
                Ok(Some(FollowEvent::Output(chunk))) => {
                    if tx.send(Message::Binary(chunk.data.into())).await.is_err() {
                        break End::ClientGone;
                    }
                }
                Ok(Some(FollowEvent::Dropped { dropped, cursor })) => {
                    let notice = AttachNotice::Dropped { dropped, cursor };
                    if send_notice(&mut tx, &notice).await.is_err() {
                        break End::ClientGone;
                    }
                }
                Ok(Some(FollowEvent::Exit(snapshot))) => {
                    break End::Close(CLOSE_NORMAL, exit_reason(&snapshot.status, snapshot.error.as_deref()));
                }
                Ok(None) => break End::Close(CLOSE_NORMAL, "ended".into()),
                Err(e) => break End::Close(CLOSE_GOING_AWAY, e.to_string()),
            },
            message = rx.next() => match message {
                Some(Ok(Message::Binary(data))) => {
                    if let Err(e) = handle.write_stdin(&data, false).await {
                        if report(&mut tx, &e).await.is_err() {
                            break End::ClientGone;
                        }
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    if let Err(e) = control(&handle, text.as_str()).await {
                        if report(&mut tx, &e).await.is_err() {
                            break End::ClientGone;
                        }
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break End::ClientGone,
            },
        }
    };
    if let End::Close(code, reason) = end {
        let frame = CloseFrame {
            code,
            reason: truncate(&reason, MAX_REASON_BYTES).into(),
        };
        let _ = tx.send(Message::Close(Some(frame))).await;
        // Wait briefly for the client's close, as the protocol asks.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), rx.next()).await;
    }
}

/// A control frame applied to the process.
async fn control(handle: &ProcessHandle, text: &str) -> Result<(), SandboxError> {
    let control: AttachControl = serde_json::from_str(text)
        .map_err(|e| SandboxError::Invalid(format!("bad control frame: {e}")))?;
    match control {
        AttachControl::Resize { rows, cols } => handle.resize(rows, cols).await,
        AttachControl::Signal { signal } => handle.signal(&signal).await,
        AttachControl::Eof => handle.write_stdin(&[], true).await,
    }
}

/// Tells the client a frame of its was refused, as a text frame
/// `{"type": "error", "error": "…"}`; the session goes on.
async fn report(
    tx: &mut futures::stream::SplitSink<WebSocket, Message>,
    error: &SandboxError,
) -> Result<(), axum::Error> {
    let notice = AttachNotice::Error {
        error: error.to_string(),
    };
    send_notice(tx, &notice).await
}

/// Sends `notice` as a text frame.
async fn send_notice(
    tx: &mut futures::stream::SplitSink<WebSocket, Message>,
    notice: &AttachNotice,
) -> Result<(), axum::Error> {
    let text = serde_json::to_string(notice).unwrap_or_default();
    tx.send(Message::Text(text.into())).await
}

/// The close reason of a process's end: `exit 0`, `signal 15`, `timeout`
/// or `lost: …`.
fn exit_reason(status: &ProcessStatus, error: Option<&str>) -> String {
    match status {
        ProcessStatus::Running => "running".into(),
        ProcessStatus::Exited(code) => format!("exit {code}"),
        ProcessStatus::Killed {
            timed_out: true, ..
        } => "timeout".into(),
        ProcessStatus::Killed { signal, .. } => format!("signal {signal}"),
        ProcessStatus::Lost => format!("lost: {}", error.unwrap_or("no exit status")),
    }
}

fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_name_the_end_and_fit_a_frame() {
        assert_eq!(exit_reason(&ProcessStatus::Exited(3), None), "exit 3");
        let killed = ProcessStatus::Killed {
            signal: 15,
            exit_code: 143,
            timed_out: false,
        };
        assert_eq!(exit_reason(&killed, None), "signal 15");
        let long = "é".repeat(200);
        let reason = exit_reason(&ProcessStatus::Lost, Some(&long));
        assert!(truncate(&reason, MAX_REASON_BYTES).len() <= MAX_REASON_BYTES);
    }
}
