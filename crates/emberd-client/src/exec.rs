//! Streamed exec: `POST /sandboxes/{id}/exec` with `Accept:
//! text/event-stream`, read as [`ExecEvent`]s. Owns the meaning of the exec
//! stream's events; holds no output beyond the event being read.

use std::time::Duration;

use emberd_api::{stream::event, ExecRequest, ExecResponse};
use futures::StreamExt as _;
use reqwest::Method;

use crate::sse::{self, Events};
use crate::{sandbox_route, Client, ClientError, EXEC_TIMEOUT_GRACE};

/// One event of a streamed exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The last event: the exec's outcome, with `stdout` and `stderr` empty
    /// (they came as events before).
    Exit(ExecResponse),
}

/// The events of a streamed exec, in the order the daemon sent them.
pub struct ExecStream {
    events: Events,
    /// An answer in JSON (a daemon that does not stream): its events.
    buffered: Vec<ExecEvent>,
    done: bool,
}

impl std::fmt::Debug for ExecStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecStream")
            .field("done", &self.done)
            .finish()
    }
}

impl ExecStream {
    pub(crate) fn new(events: Events) -> Self {
        Self {
            events,
            buffered: Vec::new(),
            done: false,
        }
    }

    /// A stream that replays a whole JSON answer as events.
    fn from_response(mut response: ExecResponse) -> Self {
        let mut buffered = Vec::new();
        if !response.stdout.is_empty() {
            buffered.push(ExecEvent::Stdout(
                std::mem::take(&mut response.stdout).into_bytes(),
            ));
        }
        if !response.stderr.is_empty() {
            buffered.push(ExecEvent::Stderr(
                std::mem::take(&mut response.stderr).into_bytes(),
            ));
        }
        buffered.push(ExecEvent::Exit(response));
        buffered.reverse();
        Self {
            events: Box::pin(futures::stream::empty()),
            buffered,
            done: false,
        }
    }

    /// The next event; `None` after [`ExecEvent::Exit`] or an error. An
    /// `error` event is [`ClientError::Stream`]; a connection that ends
    /// before the exit is [`ClientError::StreamEnded`].
    pub async fn next(&mut self) -> Option<Result<ExecEvent, ClientError>> {
        if self.done {
            return None;
        }
        if let Some(event) = self.buffered.pop() {
            self.done = matches!(event, ExecEvent::Exit(_));
            return Some(Ok(event));
        }
        let result = loop {
            let event = match self.events.next().await {
                None => break Err(ClientError::StreamEnded),
                Some(Err(e)) => break Err(e),
                Some(Ok(event)) => event,
            };
            match event.event.as_str() {
                event::STDOUT => break sse::output(&event).map(|(b, _)| ExecEvent::Stdout(b)),
                event::STDERR => break sse::output(&event).map(|(b, _)| ExecEvent::Stderr(b)),
                event::EXIT => break sse::json(&event).map(ExecEvent::Exit),
                event::ERROR => {
                    break Err(ClientError::Stream {
                        message: sse::error_message(&event),
                    })
                }
                // Events added to the contract later.
                _ => continue,
            }
        };
        self.done = !matches!(result, Ok(ExecEvent::Stdout(_) | ExecEvent::Stderr(_)));
        Some(result)
    }

    /// Reads the whole stream, writing output to `stdout` and `stderr` as it
    /// comes; returns the exit event.
    pub async fn drain(
        mut self,
        mut stdout: impl FnMut(&[u8]),
        mut stderr: impl FnMut(&[u8]),
    ) -> Result<ExecResponse, ClientError> {
        while let Some(event) = self.next().await {
            match event? {
                ExecEvent::Stdout(bytes) => stdout(&bytes),
                ExecEvent::Stderr(bytes) => stderr(&bytes),
                ExecEvent::Exit(response) => return Ok(response),
            }
        }
        Err(ClientError::StreamEnded)
    }
}

impl Client {
    /// `POST /sandboxes/{id}/exec` as a stream: output as the guest writes
    /// it, then the exit. Errors before the stream starts (unknown sandbox,
    /// bad request) are [`ClientError::Api`]. A daemon that answers with
    /// JSON instead is read as a stream of its whole output.
    pub async fn exec_stream(
        &self,
        id: &str,
        request: &ExecRequest,
    ) -> Result<ExecStream, ClientError> {
        let route = sandbox_route(id, "exec")?;
        let mut builder = self
            .request(Method::POST, self.url(&route, &[])?)
            .header(reqwest::header::ACCEPT, sse::EVENT_STREAM)
            .json(request);
        if let Some(ms) = request.timeout_ms {
            builder = builder.timeout(Duration::from_millis(ms) + EXEC_TIMEOUT_GRACE);
        }
        let response = self.execute(builder).await?;
        if sse::is_event_stream(&response) {
            Ok(ExecStream::new(sse::response_events(response)))
        } else {
            let whole: ExecResponse = self.json(response, &route).await?;
            Ok(ExecStream::from_response(whole))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::tests::events_of;

    async fn all(mut stream: ExecStream) -> Vec<Result<ExecEvent, ClientError>> {
        let mut out = Vec::new();
        while let Some(event) = stream.next().await {
            out.push(event);
        }
        out
    }

    #[tokio::test]
    async fn output_then_exit_ends_the_stream() {
        let stream = ExecStream::new(events_of(&[
            b"event: stdout\ndata: {\"data\":\"a\"}\n\n",
            b"event: future-kind\ndata: {}\n\n",
            b"event: stderr\ndata: {\"data\":\"b\"}\n\n",
            b"event: exit\ndata: {\"stdout\":\"\",\"stderr\":\"\",\"exit_code\":3,\"duration_ms\":9}\n\n",
            b"event: stdout\ndata: {\"data\":\"after the end\"}\n\n",
        ]));
        let events: Vec<ExecEvent> = all(stream).await.into_iter().map(Result::unwrap).collect();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0], ExecEvent::Stdout(b"a".to_vec()));
        assert_eq!(events[1], ExecEvent::Stderr(b"b".to_vec()));
        assert!(matches!(&events[2], ExecEvent::Exit(r) if r.exit_code == 3));
    }

    #[tokio::test]
    async fn an_error_event_or_a_cut_connection_is_an_error() {
        let events = all(ExecStream::new(events_of(&[
            b"event: stdout\ndata: {\"data\":\"a\"}\n\n",
            b"event: error\ndata: {\"error\":\"sandbox deleted\"}\n\n",
        ])))
        .await;
        assert_eq!(events.len(), 2);
        assert!(
            matches!(&events[1], Err(ClientError::Stream { message }) if message == "sandbox deleted")
        );

        let events = all(ExecStream::new(events_of(&[
            b"event: stdout\ndata: {\"data\":\"a\"}\n\n",
        ])))
        .await;
        assert!(matches!(events.last(), Some(Err(ClientError::StreamEnded))));
    }

    #[tokio::test]
    async fn a_json_answer_replays_as_events() {
        let stream = ExecStream::from_response(ExecResponse {
            stdout: "out".into(),
            exit_code: 1,
            ..ExecResponse::default()
        });
        let mut out = Vec::new();
        let exit = stream
            .drain(|b| out.extend_from_slice(b), |_| panic!("no stderr"))
            .await
            .unwrap();
        assert_eq!(out, b"out");
        assert_eq!(exit.exit_code, 1);
        assert!(exit.stdout.is_empty());
    }
}
