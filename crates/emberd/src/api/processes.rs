//! `/sandboxes/{id}/processes…`: background processes (see
//! `docs/processes.md`). Parses, calls the manager, shapes the answer.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;
use emberd_api::stream::{event, DroppedEvent};
use emberd_api::{
    ErrorBody, OutputChunk, OutputPage, ProcessInfo, ProcessList, ProcessStarted, ProcessState,
    PtySize, ResizeRequest, SignalRequest, StartProcessRequest,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::Binary;
use super::stream::{error_event, json_event, output_event, sse_response, stream_name};
use super::{attach, body, parse_body, ApiError, AppState};
use crate::sandbox::process::{
    FollowEvent, ProcessCommand, ProcessFollower, ProcessParams, ProcessSnapshot, ProcessStatus,
    PAGE_BYTES,
};
use crate::sandbox::{GuestUser, SandboxError};

/// Largest `POST …/processes` body (command, code, environment).
pub const START_BODY_LIMIT: usize = 1024 * 1024;
/// Largest `POST …/processes/{pid}/stdin` body; send more in several.
pub const STDIN_BODY_LIMIT: usize = 1024 * 1024;
/// Largest signal or resize body.
const SMALL_BODY_LIMIT: usize = 4 * 1024;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start, list))
        .routes(routes!(get_one))
        .routes(routes!(signal))
        .routes(routes!(stdin))
        .routes(routes!(resize))
        .routes(routes!(output))
        .routes(routes!(attach::attach))
}

pub(super) fn parse_pid(pid: &str) -> Result<u32, ApiError> {
    pid.parse().map_err(|_| {
        ApiError::Sandbox(SandboxError::Invalid(format!(
            "a process id is a number, not {:?}",
            pid.chars().take(32).collect::<String>()
        )))
    })
}

/// A query parameter that must be an unsigned number when present.
pub(super) fn query_u64(
    query: &HashMap<String, String>,
    name: &str,
) -> Result<Option<u64>, ApiError> {
    query
        .get(name)
        .map(|value| {
            value.parse().map_err(|_| {
                ApiError::Sandbox(SandboxError::Invalid(format!(
                    "{name} must be a byte offset (an unsigned number)"
                )))
            })
        })
        .transpose()
}

/// A query parameter that is `true`, `false`, or absent (false).
fn query_bool(query: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match query.get(name).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(_) => Err(ApiError::Sandbox(SandboxError::Invalid(format!(
            "{name} must be true or false"
        )))),
    }
}

fn process_params(request: StartProcessRequest) -> Result<ProcessParams, ApiError> {
    let invalid = |message: &str| ApiError::Sandbox(SandboxError::Invalid(message.to_owned()));
    let command = match (request.cmd, request.code) {
        (Some(cmd), None) => ProcessCommand::Argv(cmd),
        (None, Some(code)) => ProcessCommand::Code(code),
        _ => return Err(invalid("give exactly one of \"cmd\" and \"code\"")),
    };
    let user = match request.user.as_deref() {
        None => GuestUser::default(),
        Some(name) => GuestUser::from_name(name)
            .ok_or_else(|| invalid("user must be \"sandbox\" or \"root\""))?,
    };
    Ok(ProcessParams {
        command,
        env: request.env,
        cwd: request.cwd,
        stdin: request.stdin,
        pty: request.pty.map(|p| (p.rows, p.cols)),
        timeout: request
            .timeout_ms
            .filter(|ms| *ms > 0)
            .map(std::time::Duration::from_millis),
        user,
    })
}

pub(super) fn process_info(snapshot: ProcessSnapshot) -> ProcessInfo {
    let (state, exit_code, signal, timed_out) = match snapshot.status {
        ProcessStatus::Running => (ProcessState::Running, None, None, false),
        ProcessStatus::Exited(code) => (ProcessState::Exited, Some(code), None, false),
        ProcessStatus::Killed {
            signal,
            exit_code,
            timed_out,
        } => (
            ProcessState::Killed,
            Some(exit_code),
            Some(signal),
            timed_out,
        ),
        ProcessStatus::Lost => (ProcessState::Lost, None, None, false),
    };
    let rfc3339 = |t| humantime::format_rfc3339_seconds(t).to_string();
    ProcessInfo {
        pid: snapshot.pid,
        command: snapshot.command,
        state,
        exit_code,
        signal,
        timed_out,
        error: snapshot.error,
        started_at: rfc3339(snapshot.started_at),
        ended_at: snapshot.ended_at.map(rfc3339),
        pty: snapshot.pty,
        output_bytes: snapshot.output_bytes,
        output_dropped: snapshot.output_dropped,
    }
}

/// Starts a background process: a command (`cmd`) or code for the pack's
/// interpreter (`code`).
#[utoipa::path(post, path = "/sandboxes/{id}/processes", tag = "processes", operation_id = "start_process",
    params(("id" = String, Path, description = "The sandbox's id")),
    request_body(content = StartProcessRequest),
    responses(
        (status = 201, description = "Started", body = ProcessStarted),
        (status = 400, description = "Invalid JSON, not exactly one of cmd and code, a bad user, a program that cannot start", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 413, description = "The body is over its limit (1 MiB)", body = ErrorBody),
        (status = 429, description = "The sandbox runs its most processes", body = ErrorBody),
        (status = 500, description = "The guest agent failed or stopped answering", body = ErrorBody),
        (status = 503, description = "The daemon is shutting down", body = ErrorBody),
    ))]
async fn start(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ProcessStarted>), ApiError> {
    state.manager.check_exists(&id)?;
    let body =
        body::read_bounded(&headers, body, START_BODY_LIMIT, state.body_read_timeout).await?;
    let request: StartProcessRequest = parse_body(&body, false)?;
    let started = state
        .manager
        .start_process(&id, process_params(request)?)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ProcessStarted { pid: started.pid }),
    ))
}

/// The sandbox's processes, running and ended (oldest first).
#[utoipa::path(get, path = "/sandboxes/{id}/processes", tag = "processes", operation_id = "list_processes",
    params(("id" = String, Path, description = "The sandbox's id")),
    responses(
        (status = 200, description = "The processes", body = ProcessList),
        (status = 404, description = "No such sandbox", body = ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ProcessList>, ApiError> {
    let processes = state.manager.processes(&id)?;
    Ok(Json(ProcessList {
        processes: processes.into_iter().map(process_info).collect(),
    }))
}

/// One process.
#[utoipa::path(get, path = "/sandboxes/{id}/processes/{pid}", tag = "processes", operation_id = "get_process",
    params(("id" = String, Path, description = "The sandbox's id"), ("pid" = u32, Path, description = "The process's pid in the guest")),
    responses(
        (status = 200, description = "The process", body = ProcessInfo),
        (status = 400, description = "The pid is not a number", body = ErrorBody),
        (status = 404, description = "No such sandbox or process", body = ErrorBody),
    ))]
async fn get_one(
    State(state): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
) -> Result<Json<ProcessInfo>, ApiError> {
    let handle = state.manager.process(&id, parse_pid(&pid)?)?;
    Ok(Json(process_info(handle.snapshot())))
}

/// Sends a signal to the process (and its process group).
#[utoipa::path(post, path = "/sandboxes/{id}/processes/{pid}/signal", tag = "processes", operation_id = "signal_process",
    params(("id" = String, Path, description = "The sandbox's id"), ("pid" = u32, Path, description = "The process's pid in the guest")),
    request_body(content = SignalRequest),
    responses(
        (status = 204, description = "Sent"),
        (status = 400, description = "The pid is not a number, or invalid JSON", body = ErrorBody),
        (status = 404, description = "No such sandbox or process", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "The process is not running", body = ErrorBody),
        (status = 413, description = "The body is over its limit", body = ErrorBody),
        (status = 500, description = "The guest agent failed or stopped answering", body = ErrorBody),
    ))]
async fn signal(
    State(state): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let handle = state.manager.process(&id, parse_pid(&pid)?)?;
    let request: SignalRequest = small_json(&state, &headers, body).await?;
    handle.signal(&request.signal).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Writes the body to the process's stdin (started with `stdin: true`).
#[utoipa::path(post, path = "/sandboxes/{id}/processes/{pid}/stdin", tag = "processes", operation_id = "write_stdin",
    params(("id" = String, Path, description = "The sandbox's id"), ("pid" = u32, Path, description = "The process's pid in the guest"),
        ("eof" = Option<bool>, Query, description = "Close stdin after these bytes")),
    request_body(content = Binary, content_type = "application/octet-stream", description = "Bytes for stdin (at most 1 MiB a request)"),
    responses(
        (status = 204, description = "Written"),
        (status = 400, description = "The pid is not a number, or invalid JSON", body = ErrorBody),
        (status = 404, description = "No such sandbox or process", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "The process is not running", body = ErrorBody),
        (status = 413, description = "The body is over its limit", body = ErrorBody),
        (status = 500, description = "The guest agent failed or stopped answering", body = ErrorBody),
    ))]
async fn stdin(
    State(state): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let handle = state.manager.process(&id, parse_pid(&pid)?)?;
    let eof = query_bool(&query, "eof")?;
    let body =
        body::read_bounded(&headers, body, STDIN_BODY_LIMIT, state.body_read_timeout).await?;
    handle.write_stdin(&body, eof).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Resizes the process's terminal (started with `pty`).
#[utoipa::path(post, path = "/sandboxes/{id}/processes/{pid}/resize", tag = "processes", operation_id = "resize_process",
    params(("id" = String, Path, description = "The sandbox's id"), ("pid" = u32, Path, description = "The process's pid in the guest")),
    request_body(content = PtySize),
    responses(
        (status = 204, description = "Resized"),
        (status = 400, description = "The pid is not a number, or invalid JSON", body = ErrorBody),
        (status = 404, description = "No such sandbox or process", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "The process is not running", body = ErrorBody),
        (status = 413, description = "The body is over its limit", body = ErrorBody),
        (status = 500, description = "The guest agent failed or stopped answering", body = ErrorBody),
    ))]
async fn resize(
    State(state): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let handle = state.manager.process(&id, parse_pid(&pid)?)?;
    let request: ResizeRequest = small_json(&state, &headers, body).await?;
    handle.resize(request.rows, request.cols).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The JSON body of a control route (signal, resize), within [`SMALL_BODY_LIMIT`].
async fn small_json<T: serde::de::DeserializeOwned + Default>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let body = body::read_bounded(headers, body, SMALL_BODY_LIMIT, state.body_read_timeout).await?;
    parse_body(&body, false)
}

/// The `Last-Event-ID` a reconnecting SSE client sends, when it is a cursor.
fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The process's output from a cursor: one page as JSON, or with
/// `follow=true` Server-Sent Events (`stdout`, `stderr`, `dropped`, then
/// `exit` or `error`) until it ends. `Last-Event-ID` resumes a stream.
#[utoipa::path(get, path = "/sandboxes/{id}/processes/{pid}/output", tag = "processes", operation_id = "process_output",
    params(("id" = String, Path, description = "The sandbox's id"), ("pid" = u32, Path, description = "The process's pid in the guest"),
        ("cursor" = Option<u64>, Query, description = "The byte offset to read from (0 when absent)"),
        ("limit" = Option<u64>, Query, description = "Most bytes in a page"),
        ("follow" = Option<bool>, Query, description = "Answer as Server-Sent Events until the process ends"),
        ("last-event-id" = Option<String>, Header, pattern = "^[0-9]+$", description = "A follower's cursor to resume from")),
    responses(
        (status = 200, description = "A page of output, or its events as they happen",
            content(
                (OutputPage = "application/json"),
                (String = "text/event-stream"),
            )),
        (status = 400, description = "The pid is not a number, a bad query, a cursor beyond the end", body = ErrorBody),
        (status = 404, description = "No such sandbox or process", body = ErrorBody),
    ))]
async fn output(
    State(state): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let handle = state.manager.process(&id, parse_pid(&pid)?)?;
    let cursor = match last_event_id(&headers) {
        Some(cursor) => cursor,
        None => query_u64(&query, "cursor")?.unwrap_or(0),
    };
    if query_bool(&query, "follow")? {
        let follower = handle.follow(Some(cursor))?;
        return Ok(follow_events(follower));
    }
    let limit = query_u64(&query, "limit")?
        .map_or(PAGE_BYTES, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let page = handle.page(cursor, limit)?;
    Ok(Json(OutputPage {
        chunks: page
            .chunks
            .into_iter()
            .map(|chunk| OutputChunk {
                stream: stream_name(chunk.stream).to_owned(),
                event: output_event(&chunk.data, Some(chunk.cursor)),
            })
            .collect(),
        next_cursor: page.next_cursor,
        dropped: page.dropped,
        complete: page.complete,
    })
    .into_response())
}

/// A follower as SSE: each output event's `id` is the cursor after it.
fn follow_events(follower: ProcessFollower) -> Response {
    let events = futures::stream::unfold(Some(follower), |follower| async move {
        let mut follower = follower?;
        let event = match follower.next().await {
            Ok(Some(event)) => follow_event(event),
            Ok(None) => return None,
            Err(e) => return Some((Ok(error_event(e)), None)),
        };
        Some((Ok(event), Some(follower)))
    });
    sse_response(events)
}

fn follow_event(event: FollowEvent) -> Event {
    match event {
        FollowEvent::Output(chunk) => {
            let after = chunk.cursor + chunk.data.len() as u64;
            json_event(
                stream_name(chunk.stream),
                &output_event(&chunk.data, Some(chunk.cursor)),
            )
            .id(after.to_string())
        }
        FollowEvent::Dropped { dropped, cursor } => {
            json_event(event::DROPPED, &DroppedEvent { dropped, cursor }).id(cursor.to_string())
        }
        FollowEvent::Exit(snapshot) => json_event(event::EXIT, &process_info(snapshot)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_needs_exactly_one_of_cmd_and_code() {
        let both = StartProcessRequest {
            cmd: Some(vec!["ls".into()]),
            code: Some("print(1)".into()),
            ..StartProcessRequest::default()
        };
        assert!(process_params(both).is_err());
        assert!(process_params(StartProcessRequest::default()).is_err());
        let code = StartProcessRequest {
            code: Some("print(1)".into()),
            timeout_ms: Some(0),
            ..StartProcessRequest::default()
        };
        let params = process_params(code).unwrap();
        assert_eq!(params.command, ProcessCommand::Code("print(1)".into()));
        assert_eq!(params.timeout, None);
        let bad_user = StartProcessRequest {
            cmd: Some(vec!["ls".into()]),
            user: Some("admin".into()),
            ..StartProcessRequest::default()
        };
        assert!(process_params(bad_user).is_err());
    }

    #[test]
    fn query_flags_and_cursors_parse_strictly() {
        let query: HashMap<String, String> = [
            ("cursor".to_owned(), "12".to_owned()),
            ("follow".to_owned(), "true".to_owned()),
            ("bad".to_owned(), "-1".to_owned()),
        ]
        .into();
        assert_eq!(query_u64(&query, "cursor").unwrap(), Some(12));
        assert_eq!(query_u64(&query, "missing").unwrap(), None);
        assert!(query_u64(&query, "bad").is_err());
        assert!(query_bool(&query, "follow").unwrap());
        assert!(!query_bool(&query, "missing").unwrap());
        assert!(query_bool(&query, "cursor").is_err());
        let mut headers = HeaderMap::new();
        assert_eq!(last_event_id(&headers), None);
        headers.insert("last-event-id", "4096".parse().unwrap());
        assert_eq!(last_event_id(&headers), Some(4096));
    }
}
