//! Following a background process's output: `GET …/processes/{pid}/output
//! ?cursor=N&follow=true` as [`ProcessEvent`]s. Owns the cursor: a follow
//! whose connection breaks reconnects from the cursor after the last byte
//! it delivered and trims whatever the daemon sends again, so that every
//! byte is delivered once. It never retries an answer of the daemon (a 4xx,
//! an `error` event).

use std::time::Duration;

use emberd_api::{stream::event, DroppedEvent, ProcessInfo};
use eventsource_stream::Event;
use futures::StreamExt as _;
use reqwest::Method;

use crate::sse::{self, Events};
use crate::{sandbox_route, Client, ClientError};

/// Reconnects in a row (without an event in between) before a follow gives up.
const DEFAULT_RECONNECTS: u32 = 10;
/// The first pause before a reconnect; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// Which output stream a piece came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Stdout,
    Stderr,
}

/// One event of a followed process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    /// Output bytes at log offset `cursor`.
    Output {
        stream: StreamKind,
        cursor: u64,
        data: Vec<u8>,
    },
    /// Output fell off the start of the log before it could be read.
    Dropped(DroppedEvent),
    /// The last event: the process ended.
    Exit(ProcessInfo),
}

/// What the events of a follow mean, given the cursor reached so far.
#[derive(Debug, Default)]
struct Position {
    /// The log offset after the last byte delivered.
    cursor: u64,
}

impl Position {
    /// The meaning of `event`, or `None` for an event that carries nothing new.
    fn interpret(&mut self, event: &Event) -> Option<Result<ProcessEvent, ClientError>> {
        let stream = match event.event.as_str() {
            event::STDOUT => StreamKind::Stdout,
            event::STDERR => StreamKind::Stderr,
            event::DROPPED => {
                return Some(sse::json::<DroppedEvent>(event).map(|dropped| {
                    self.cursor = self.cursor.max(dropped.cursor);
                    ProcessEvent::Dropped(dropped)
                }))
            }
            event::EXIT => return Some(sse::json(event).map(ProcessEvent::Exit)),
            event::ERROR => {
                return Some(Err(ClientError::Stream {
                    message: sse::error_message(event),
                }))
            }
            _ => return None,
        };
        let (mut data, cursor) = match sse::output(event) {
            Ok(output) => output,
            Err(e) => return Some(Err(e)),
        };
        let len = data.len() as u64;
        // The event's own offset; else its id (the offset after it); else
        // it follows what came before.
        let start = cursor
            .or_else(|| {
                event
                    .id
                    .parse::<u64>()
                    .ok()
                    .map(|id| id.saturating_sub(len))
            })
            .unwrap_or(self.cursor);
        let end = start + len;
        if end <= self.cursor {
            return None; // sent again after a reconnect: delivered already
        }
        if start < self.cursor {
            data.drain(..(self.cursor - start) as usize);
        }
        let cursor = start.max(self.cursor);
        self.cursor = end;
        Some(Ok(ProcessEvent::Output {
            stream,
            cursor,
            data,
        }))
    }
}

/// A followed process's output, reconnecting when the connection breaks.
pub struct OutputFollow {
    client: Client,
    route: String,
    events: Option<Events>,
    position: Position,
    reconnects: u32,
    max_reconnects: u32,
    failures: u32,
    done: bool,
}

impl std::fmt::Debug for OutputFollow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputFollow")
            .field("route", &self.route)
            .field("cursor", &self.position.cursor)
            .field("reconnects", &self.reconnects)
            .finish()
    }
}

impl OutputFollow {
    /// The log offset after the last byte delivered: where a new follow
    /// (or `GET …/output?cursor=`) would resume.
    pub fn cursor(&self) -> u64 {
        self.position.cursor
    }

    /// How many times the follow reconnected after a broken connection.
    pub fn reconnects(&self) -> u32 {
        self.reconnects
    }

    /// Sets how many reconnects in a row (0: none) are tried before a
    /// broken connection is returned as an error.
    pub fn with_max_reconnects(mut self, max: u32) -> Self {
        self.max_reconnects = max;
        self
    }

    async fn connect(&self) -> Result<Events, ClientError> {
        let query = [
            ("cursor", self.position.cursor.to_string()),
            ("follow", "true".to_owned()),
        ];
        let request = self
            .client
            .request(Method::GET, self.client.url(&self.route, &query)?)
            .header(reqwest::header::ACCEPT, sse::EVENT_STREAM);
        let response = self.client.execute(request).await?;
        Ok(sse::response_events(response))
    }

    /// The next event; `None` after [`ProcessEvent::Exit`] or an error.
    pub async fn next(&mut self) -> Option<Result<ProcessEvent, ClientError>> {
        while !self.done {
            let events = match &mut self.events {
                Some(events) => events,
                None => match self.connect().await {
                    Ok(events) => self.events.insert(events),
                    Err(e) => match self.retry(e).await {
                        Ok(()) => continue,
                        Err(e) => return Some(Err(e)),
                    },
                },
            };
            let event = match events.next().await {
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    self.events = None;
                    match self.retry(e).await {
                        Ok(()) => continue,
                        Err(e) => return Some(Err(e)),
                    }
                }
                None => {
                    self.events = None;
                    match self.retry(ClientError::StreamEnded).await {
                        Ok(()) => continue,
                        Err(e) => return Some(Err(e)),
                    }
                }
            };
            let Some(result) = self.position.interpret(&event) else {
                continue;
            };
            self.failures = 0;
            self.done = !matches!(
                result,
                Ok(ProcessEvent::Output { .. } | ProcessEvent::Dropped(_))
            );
            return Some(result);
        }
        None
    }

    /// Waits before a reconnect, or gives `error` back (and ends the follow)
    /// when it is not a broken connection or the reconnects are used up.
    async fn retry(&mut self, error: ClientError) -> Result<(), ClientError> {
        if !error.is_interrupted() || self.failures >= self.max_reconnects {
            self.done = true;
            return Err(error);
        }
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << self.failures.min(8))
            .min(MAX_BACKOFF);
        self.failures += 1;
        self.reconnects += 1;
        tokio::time::sleep(backoff).await;
        Ok(())
    }
}

impl Client {
    /// Follows process `pid`'s output from log offset `cursor` until it
    /// ends. A broken connection is resumed from the last cursor (see
    /// [`OutputFollow::with_max_reconnects`]); a 4xx on the first request
    /// is returned here.
    pub async fn follow_output(
        &self,
        id: &str,
        pid: u32,
        cursor: u64,
    ) -> Result<OutputFollow, ClientError> {
        let mut follow = OutputFollow {
            client: self.clone(),
            route: sandbox_route(id, &format!("processes/{pid}/output"))?,
            events: None,
            position: Position { cursor },
            reconnects: 0,
            max_reconnects: DEFAULT_RECONNECTS,
            failures: 0,
            done: false,
        };
        follow.events = Some(follow.connect().await?);
        Ok(follow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::tests::events_of;

    async fn interpret(position: &mut Position, chunks: &[&[u8]]) -> Vec<ProcessEvent> {
        let mut events = events_of(chunks);
        let mut out = Vec::new();
        while let Some(event) = events.next().await {
            if let Some(result) = position.interpret(&event.unwrap()) {
                out.push(result.unwrap());
            }
        }
        out
    }

    fn text(events: &[ProcessEvent]) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                ProcessEvent::Output { data, .. } => Some(String::from_utf8_lossy(data)),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn bytes_sent_again_after_a_reconnect_are_delivered_once() {
        let mut position = Position::default();
        let first = interpret(
            &mut position,
            &[b"event: stdout\nid: 5\ndata: {\"data\":\"hello\",\"cursor\":0}\n\n"],
        )
        .await;
        assert_eq!(position.cursor, 5);
        // The daemon resumes a little early: an overlap, then a repeat.
        let second = interpret(
            &mut position,
            &[
                b"event: stdout\nid: 11\ndata: {\"data\":\"lo world\",\"cursor\":3}\n\n",
                b"event: stderr\nid: 11\ndata: {\"data\":\"world\",\"cursor\":6}\n\n",
                b"event: stderr\nid: 12\ndata: {\"data\":\"!\",\"cursor\":11}\n\n",
            ],
        )
        .await;
        assert_eq!(text(&first) + &text(&second), "hello world!");
        assert_eq!(
            second[0],
            ProcessEvent::Output {
                stream: StreamKind::Stdout,
                cursor: 5,
                data: b" world".to_vec()
            }
        );
        assert_eq!(position.cursor, 12);
    }

    #[tokio::test]
    async fn offsets_come_from_the_id_when_the_data_has_none() {
        let mut position = Position { cursor: 4 };
        let events = interpret(
            &mut position,
            &[b"event: stdout\nid: 10\ndata: {\"data\":\"abcdef\"}\n\n"],
        )
        .await;
        assert!(matches!(&events[0], ProcessEvent::Output { cursor: 4, .. }));
        assert_eq!(position.cursor, 10);
    }

    #[tokio::test]
    async fn a_drop_moves_the_cursor_and_exit_carries_the_process() {
        let mut position = Position::default();
        let events = interpret(
            &mut position,
            &[
                b"event: dropped\ndata: {\"dropped\":100,\"cursor\":100}\n\n",
                b"event: stdout\nid: 102\ndata: {\"data\":\"ok\",\"cursor\":100}\n\n",
                b"event: exit\ndata: {\"pid\":7,\"command\":[\"sh\"],\"state\":\"exited\",\"exit_code\":0,\"started_at\":\"t\",\"output_bytes\":102,\"output_dropped\":100}\n\n",
            ],
        )
        .await;
        assert_eq!(
            events[0],
            ProcessEvent::Dropped(DroppedEvent {
                dropped: 100,
                cursor: 100
            })
        );
        assert_eq!(text(&events), "ok");
        assert!(matches!(&events[2], ProcessEvent::Exit(info) if info.exit_code == Some(0)));
        assert_eq!(position.cursor, 102);
    }
}
