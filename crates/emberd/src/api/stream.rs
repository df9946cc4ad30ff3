//! Server-Sent Events: the streamed exec (`POST /sandboxes/{id}/exec` with
//! `Accept: text/event-stream`) and the shared encoding of output pieces
//! (UTF-8 text, or base64 when they are not).
//!
//! Each event is one body frame, and hyper writes a frame out as soon as
//! the stream yields it (no compression layer or buffer sits in between),
//! so a byte the guest writes reaches the client at once. Errors found
//! before the stream starts are ordinary JSON answers; after it starts, an
//! `error` event ends it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use emberd_api::stream::{event, OutputEvent};
use emberd_api::{ErrorBody, ExecRequest};
use futures::Stream;

use super::{wire, ApiError, AppState};
use crate::guest::OutputStream;
use crate::sandbox::process::incomplete_utf8_tail;
use crate::sandbox::{ExecStream, ExecStreamEvent, SandboxError};

/// How often an idle stream sends a comment, so that a client (or a proxy)
/// that went away is noticed and nothing times the stream out.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// True when the request asks for Server-Sent Events.
pub(super) fn wants_events(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// Output bytes as an [`OutputEvent`]: text when they are UTF-8, else base64.
pub(super) fn output_event(data: &[u8], cursor: Option<u64>) -> OutputEvent {
    match std::str::from_utf8(data) {
        Ok(text) => OutputEvent {
            data: text.to_owned(),
            base64: false,
            cursor,
        },
        Err(_) => OutputEvent {
            data: base64::engine::general_purpose::STANDARD.encode(data),
            base64: true,
            cursor,
        },
    }
}

pub(super) fn stream_name(stream: OutputStream) -> &'static str {
    match stream {
        OutputStream::Stdout => event::STDOUT,
        OutputStream::Stderr => event::STDERR,
    }
}

/// An event whose data is `value` as JSON.
pub(super) fn json_event(name: &str, value: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned()))
}

/// The `error` event that ends a stream abnormally.
pub(super) fn error_event(error: SandboxError) -> Event {
    let error = ApiError::Sandbox(error);
    json_event(
        event::ERROR,
        &ErrorBody {
            error: crate::error_chain::render(&error),
        },
    )
}

/// An SSE answer over `events`, with keep-alive comments, marked unbuffered
/// for proxies.
pub(super) fn sse_response(
    events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Response {
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// `POST /sandboxes/{id}/exec` answered as events.
pub(super) async fn exec_events(
    state: &AppState,
    id: &str,
    request: ExecRequest,
) -> Result<Response, ApiError> {
    let stream = state.manager.exec_stream(id, wire::exec_params(request)?)?;
    let exec = ExecEvents {
        stream,
        held: [Vec::new(), Vec::new()],
        queue: VecDeque::new(),
        done: false,
    };
    let events = futures::stream::unfold(exec, |mut exec| async move {
        let event = exec.next_event().await?;
        Some((Ok(event), exec))
    });
    Ok(sse_response(events))
}

/// A streamed exec turned into events, holding back per stream the start
/// of a UTF-8 sequence a piece ended in until the next piece completes it.
struct ExecEvents {
    stream: ExecStream,
    /// Per stream (stdout, stderr): bytes held back.
    held: [Vec<u8>; 2],
    queue: VecDeque<Event>,
    done: bool,
}

impl ExecEvents {
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            match self.stream.next().await {
                Some(ExecStreamEvent::Output(stream, data)) => {
                    let held = &mut self.held[stream as usize];
                    held.extend_from_slice(&data);
                    let keep = incomplete_utf8_tail(held);
                    let ready: Vec<u8> = held.drain(..held.len() - keep).collect();
                    if !ready.is_empty() {
                        let data = output_event(&ready, None);
                        self.queue.push_back(json_event(stream_name(stream), &data));
                    }
                }
                Some(ExecStreamEvent::Done(result)) => {
                    self.done = true;
                    for stream in [OutputStream::Stdout, OutputStream::Stderr] {
                        let held = std::mem::take(&mut self.held[stream as usize]);
                        if !held.is_empty() {
                            let data = output_event(&held, None);
                            self.queue.push_back(json_event(stream_name(stream), &data));
                        }
                    }
                    self.queue.push_back(match result {
                        Ok(outcome) => json_event(event::EXIT, &wire::exec_response(outcome)),
                        Err(e) => error_event(e),
                    });
                }
                None => {
                    self.done = true;
                    self.queue.push_back(error_event(SandboxError::Invalid(
                        "the exec ended without an outcome".into(),
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_ask_for_events_only_when_they_name_them() {
        let mut headers = HeaderMap::new();
        assert!(!wants_events(&headers));
        headers.insert(header::ACCEPT, "application/json".parse().unwrap());
        assert!(!wants_events(&headers));
        headers.insert(
            header::ACCEPT,
            "application/json, Text/Event-Stream;q=0.9".parse().unwrap(),
        );
        assert!(wants_events(&headers));
    }

    #[test]
    fn output_is_text_when_utf8_and_base64_otherwise() {
        let text = output_event("héllo".as_bytes(), Some(3));
        assert_eq!(text.data, "héllo");
        assert!(!text.base64);
        assert_eq!(text.cursor, Some(3));
        let binary = output_event(b"\xff\x00", None);
        assert!(binary.base64);
        assert_eq!(binary.data, "/wA=");
    }
}
