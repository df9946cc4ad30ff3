//! Attaching to a background process: `GET …/processes/{pid}/attach` as a
//! WebSocket. Binary frames in are stdin, binary frames out are output,
//! text frames are `AttachControl` JSON, and the daemon's close frame says
//! how the process ended. Owns the frame shapes; knows nothing of terminals.

use emberd_api::{AttachControl, AttachNotice, DroppedEvent};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{sandbox_route, Client, ClientError};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How an attached process's WebSocket ended: the reason of the daemon's
/// close frame ("exit 0", "signal 15", "timeout", "lost: …", or why the
/// sandbox went away).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachEnd {
    pub reason: String,
}

impl AttachEnd {
    /// The exit status, for a reason of the form `exit N`.
    pub fn exit_code(&self) -> Option<i32> {
        self.reason.strip_prefix("exit ")?.trim().parse().ok()
    }

    /// True for the reason of a process killed at its timeout.
    pub fn timed_out(&self) -> bool {
        self.reason == "timeout"
    }

    /// The signal number, for a reason that ends in `signal N`.
    pub fn signal(&self) -> Option<i32> {
        let (_, number) = self.reason.rsplit_once("signal ")?;
        number.trim().parse().ok()
    }
}

/// What an attached process sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachEvent {
    Output(Vec<u8>),
    /// Output fell off the start of the process's log before it was sent
    /// (a text frame `{"type":"dropped",…}`).
    Dropped(DroppedEvent),
    /// The daemon refused a frame of ours, e.g. a bad control frame or
    /// stdin after end-of-input (a text frame `{"type":"error",…}`); the
    /// session goes on.
    Refused(String),
    /// The last event: the daemon closed the socket.
    End(AttachEnd),
}

/// The meaning of a text frame from the daemon; `None` for kinds this
/// client does not know.
fn notice(text: &str) -> Option<AttachEvent> {
    match serde_json::from_str(text).ok()? {
        AttachNotice::Dropped { dropped, cursor } => {
            Some(AttachEvent::Dropped(DroppedEvent { dropped, cursor }))
        }
        AttachNotice::Error { error } => Some(AttachEvent::Refused(error)),
    }
}

/// The sending half: stdin and control frames.
pub struct AttachSender {
    sink: SplitSink<Socket, Message>,
}

/// The receiving half: output and the end.
pub struct AttachReceiver {
    stream: SplitStream<Socket>,
    done: bool,
}

/// A WebSocket attached to a process; [`Attach::split`] it to read and
/// write at once.
pub struct Attach {
    sender: AttachSender,
    receiver: AttachReceiver,
}

impl std::fmt::Debug for Attach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attach").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AttachSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachSender").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AttachReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachReceiver")
            .field("done", &self.done)
            .finish()
    }
}

impl Attach {
    pub fn split(self) -> (AttachSender, AttachReceiver) {
        (self.sender, self.receiver)
    }

    pub async fn send_stdin(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.sender.send_stdin(bytes).await
    }

    pub async fn send_control(&mut self, control: &AttachControl) -> Result<(), ClientError> {
        self.sender.send_control(control).await
    }

    pub async fn next(&mut self) -> Option<Result<AttachEvent, ClientError>> {
        self.receiver.next().await
    }
}

impl AttachSender {
    /// Bytes for the process's stdin (a binary frame).
    pub async fn send_stdin(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.sink
            .send(Message::Binary(bytes.to_vec().into()))
            .await
            .map_err(Into::into)
    }

    /// A resize, signal or end-of-input (a text frame).
    pub async fn send_control(&mut self, control: &AttachControl) -> Result<(), ClientError> {
        let text = serde_json::to_string(control).expect("a control frame serialises");
        self.sink
            .send(Message::Text(text.into()))
            .await
            .map_err(Into::into)
    }

    /// Closes the client's side (the process keeps running).
    pub async fn close(&mut self) -> Result<(), ClientError> {
        self.sink.close().await.map_err(Into::into)
    }
}

impl AttachReceiver {
    /// The next output, or the end; `None` after the end. A connection
    /// that breaks without a close frame is [`ClientError::StreamEnded`].
    pub async fn next(&mut self) -> Option<Result<AttachEvent, ClientError>> {
        if self.done {
            return None;
        }
        loop {
            let message = match self.stream.next().await {
                None => {
                    self.done = true;
                    return Some(Err(ClientError::StreamEnded));
                }
                Some(Err(tungstenite::Error::ConnectionClosed)) => {
                    self.done = true;
                    return Some(Err(ClientError::StreamEnded));
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
                Some(Ok(message)) => message,
            };
            match message {
                Message::Binary(bytes) => return Some(Ok(AttachEvent::Output(bytes.to_vec()))),
                Message::Close(frame) => {
                    self.done = true;
                    let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                    return Some(Ok(AttachEvent::End(AttachEnd { reason })));
                }
                Message::Text(text) => match notice(text.as_str()) {
                    Some(event) => return Some(Ok(event)),
                    None => continue,
                },
                // Pings are answered by tungstenite.
                _ => continue,
            }
        }
    }
}

/// The WebSocket URL of an HTTP URL.
fn ws_url(mut url: reqwest::Url) -> reqwest::Url {
    let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
    url.set_scheme(scheme)
        .expect("http and https map to ws and wss");
    url
}

impl Client {
    /// `GET …/processes/{pid}/attach[?cursor=N]` as a WebSocket: output from
    /// log offset `cursor` (the daemon's choice when `None`), then live.
    pub async fn attach(
        &self,
        id: &str,
        pid: u32,
        cursor: Option<u64>,
    ) -> Result<Attach, ClientError> {
        let route = sandbox_route(id, &format!("processes/{pid}/attach"))?;
        let query: Vec<(&str, String)> = cursor
            .map(|c| ("cursor", c.to_string()))
            .into_iter()
            .collect();
        let url = ws_url(self.url(&route, &query)?);
        let mut request = url.as_str().into_client_request()?;
        if let Some(token) = self.token() {
            let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                ClientError::InvalidHeader {
                    header: AUTHORIZATION.to_string(),
                    value: "<token>".into(),
                }
            })?;
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        let (socket, _) = match tokio_tungstenite::connect_async(request).await {
            Ok(connected) => connected,
            Err(tungstenite::Error::Http(response)) => {
                let status = reqwest::StatusCode::from_u16(response.status().as_u16())
                    .unwrap_or(reqwest::StatusCode::BAD_GATEWAY);
                let body = response.body().as_deref().unwrap_or_default();
                return Err(ClientError::from_answer(status, body));
            }
            Err(e) => return Err(e.into()),
        };
        let (sink, stream) = socket.split();
        Ok(Attach {
            sender: AttachSender { sink },
            receiver: AttachReceiver {
                stream,
                done: false,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_give_the_exit() {
        let end = |r: &str| AttachEnd { reason: r.into() };
        assert_eq!(end("exit 0").exit_code(), Some(0));
        assert_eq!(end("exit 130").exit_code(), Some(130));
        assert_eq!(end("killed by signal 9").signal(), Some(9));
        assert_eq!(end("sandbox deleted").exit_code(), None);
        assert_eq!(end("sandbox deleted").signal(), None);
    }

    #[test]
    fn text_frames_from_the_daemon_are_notices() {
        assert_eq!(
            notice(r#"{"type":"dropped","dropped":10,"cursor":30}"#),
            Some(AttachEvent::Dropped(DroppedEvent {
                dropped: 10,
                cursor: 30
            }))
        );
        assert_eq!(
            notice(r#"{"type":"error","error":"bad control frame"}"#),
            Some(AttachEvent::Refused("bad control frame".into()))
        );
        assert_eq!(notice(r#"{"type":"later"}"#), None);
        assert_eq!(notice("not json"), None);
    }

    #[test]
    fn websocket_urls_follow_the_base() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert_eq!(
            ws_url(url("http://h:1/sandboxes/a/processes/3/attach?cursor=5")).as_str(),
            "ws://h:1/sandboxes/a/processes/3/attach?cursor=5"
        );
        assert_eq!(ws_url(url("https://h/x")).as_str(), "wss://h/x");
    }

    #[test]
    fn control_frames_match_the_contract() {
        let json = |c: &AttachControl| serde_json::to_string(c).unwrap();
        assert_eq!(
            json(&AttachControl::Resize { rows: 24, cols: 80 }),
            r#"{"type":"resize","rows":24,"cols":80}"#
        );
        assert_eq!(
            json(&AttachControl::Signal {
                signal: "TERM".into()
            }),
            r#"{"type":"signal","signal":"TERM"}"#
        );
        assert_eq!(json(&AttachControl::Eof), r#"{"type":"eof"}"#);
    }
}
