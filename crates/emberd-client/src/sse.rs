//! Server-Sent Events from a response body: framing by `eventsource-stream`
//! (line endings, multi-line `data:`, `id:`, comments, UTF-8 split across
//! chunks), decoding of the `data:` payloads of emberd's events here. Never
//! buffers more than the event being read.

use std::pin::Pin;

use base64::Engine as _;
use bytes::Bytes;
use emberd_api::OutputEvent;
use eventsource_stream::{Event, EventStreamError, Eventsource as _};
use futures::{Stream, StreamExt as _};
use serde::de::DeserializeOwned;

use crate::ClientError;

/// The `Accept` value that asks for an event stream.
pub(crate) const EVENT_STREAM: &str = "text/event-stream";

/// Parsed events of one response, or why the body could not be read.
pub(crate) type Events = Pin<Box<dyn Stream<Item = Result<Event, ClientError>> + Send>>;

/// The events of a streamed answer.
pub(crate) fn response_events(response: reqwest::Response) -> Events {
    events(response.bytes_stream(), ClientError::Transport)
}

/// The events of any byte stream; `transport` maps the stream's own errors.
pub(crate) fn events<S, E>(bytes: S, transport: fn(E) -> ClientError) -> Events
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Send + 'static,
{
    Box::pin(bytes.eventsource().map(move |item| {
        item.map_err(|e| match e {
            EventStreamError::Transport(e) => transport(e),
            EventStreamError::Utf8(e) => ClientError::InvalidEvent {
                event: String::new(),
                reason: e.to_string(),
            },
            EventStreamError::Parser(e) => ClientError::InvalidEvent {
                event: String::new(),
                reason: e.to_string(),
            },
        })
    }))
}

/// True when `response` is an event stream (not a JSON answer).
pub(crate) fn is_event_stream(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with(EVENT_STREAM))
}

/// An event's `data:` as JSON of type `T`.
pub(crate) fn json<T: DeserializeOwned>(event: &Event) -> Result<T, ClientError> {
    serde_json::from_str(&event.data).map_err(|e| invalid(event, e.to_string()))
}

/// The bytes of a `stdout`/`stderr` event and the log offset it claims.
pub(crate) fn output(event: &Event) -> Result<(Vec<u8>, Option<u64>), ClientError> {
    let output: OutputEvent = json(event)?;
    let bytes = decode_output(&output).map_err(|e| match e {
        ClientError::InvalidEvent { reason, .. } => invalid(event, reason),
        e => e,
    })?;
    Ok((bytes, output.cursor))
}

/// The bytes of a piece of output (text, or base64 when flagged), as in the
/// chunks of an `OutputPage`.
pub fn decode_output(output: &OutputEvent) -> Result<Vec<u8>, ClientError> {
    if output.base64 {
        base64::engine::general_purpose::STANDARD
            .decode(output.data.as_bytes())
            .map_err(|e| ClientError::InvalidEvent {
                event: "output".into(),
                reason: e.to_string(),
            })
    } else {
        Ok(output.data.clone().into_bytes())
    }
}

/// The message of an `error` event (its `ErrorBody`, or the raw data).
pub(crate) fn error_message(event: &Event) -> String {
    json::<emberd_api::ErrorBody>(event)
        .map(|body| body.error)
        .unwrap_or_else(|_| event.data.trim().to_owned())
}

pub(crate) fn invalid(event: &Event, reason: String) -> ClientError {
    ClientError::InvalidEvent {
        event: event.event.clone(),
        reason,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The events of `chunks` as they would arrive over a connection.
    pub(crate) fn events_of(chunks: &[&[u8]]) -> Events {
        let chunks: Vec<Result<Bytes, std::io::Error>> = chunks
            .iter()
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        events(futures::stream::iter(chunks), ClientError::Io)
    }

    async fn collect(chunks: &[&[u8]]) -> Vec<Event> {
        events_of(chunks)
            .map(|e| e.unwrap())
            .collect::<Vec<_>>()
            .await
    }

    #[tokio::test]
    async fn events_split_anywhere_parse_the_same() {
        let body = "event: stdout\r\ndata: {\"data\":\"h\u{e9}\"}\r\nid: 3\r\n\r\n: keep-alive\n\nevent: exit\ndata: {\"a\":\ndata: 1}\n\n";
        let whole = collect(&[body.as_bytes()]).await;
        assert_eq!(whole.len(), 2, "{whole:?}");
        assert_eq!(whole[0].event, "stdout");
        assert_eq!(whole[0].data, "{\"data\":\"h\u{e9}\"}");
        assert_eq!(whole[0].id, "3");
        assert_eq!(whole[1].event, "exit");
        assert_eq!(
            whole[1].data, "{\"a\":\n1}",
            "data lines join with a newline"
        );
        // Every split point, including inside the two bytes of "é".
        for at in 1..body.len() {
            let (a, b) = body.as_bytes().split_at(at);
            let split = collect(&[a, b]).await;
            assert_eq!(split.len(), 2, "split at {at}");
            for (x, y) in whole.iter().zip(&split) {
                assert_eq!((&x.event, &x.data, &x.id), (&y.event, &y.data, &y.id));
            }
        }
    }

    #[tokio::test]
    async fn an_event_cut_off_by_the_end_of_the_body_is_not_delivered() {
        let events =
            collect(&[b"event: stdout\ndata: {\"data\":\"x\"}\n\nevent: exit\ndata: {"]).await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event, "stdout");
    }

    #[tokio::test]
    async fn output_events_decode_text_and_base64() {
        let events = collect(&[
            b"event: stdout\ndata: {\"data\":\"hi\\n\",\"cursor\":7}\n\n",
            b"event: stderr\ndata: {\"data\":\"/w==\",\"base64\":true}\n\n",
            b"event: stderr\ndata: {\"data\":\"not base64!\",\"base64\":true}\n\n",
            b"event: error\ndata: {\"error\":\"sandbox deleted\"}\n\n",
            b"event: error\ndata: plain words\n\n",
        ])
        .await;
        assert_eq!(output(&events[0]).unwrap(), (b"hi\n".to_vec(), Some(7)));
        assert_eq!(output(&events[1]).unwrap(), (vec![0xff], None));
        assert!(matches!(
            output(&events[2]),
            Err(ClientError::InvalidEvent { event, .. }) if event == "stderr"
        ));
        assert_eq!(error_message(&events[3]), "sandbox deleted");
        assert_eq!(error_message(&events[4]), "plain words");
    }
}
