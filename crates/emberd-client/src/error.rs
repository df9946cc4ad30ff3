//! [`ClientError`]: every way a call to the daemon can fail. Owns the
//! classification of transport errors and error answers; performs no I/O
//! besides reading an error answer's body.

use emberd_api::ErrorBody;
use reqwest::StatusCode;

/// Why a call to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid daemon address {addr:?}: {reason}")]
    InvalidAddress { addr: String, reason: String },
    #[error("cannot connect to the daemon at {addr}")]
    Unreachable {
        addr: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the daemon at {addr} did not answer in time")]
    TimedOut {
        addr: String,
        #[source]
        source: reqwest::Error,
    },
    /// The daemon answered with an error status; `message` is its `error` field
    /// (or the raw body when it was not an error object).
    #[error("{message}")]
    Api { status: StatusCode, message: String },
    #[error("invalid sandbox id {0:?}")]
    InvalidId(String),
    #[error("request to the daemon failed")]
    Transport(#[source] reqwest::Error),
    #[error("unexpected answer from the daemon ({status}) to {route}")]
    InvalidResponse {
        route: String,
        status: StatusCode,
        #[source]
        source: serde_json::Error,
    },
    /// A stream ended with an `error` event (the sandbox was deleted, the
    /// guest stopped answering); `message` is the daemon's reason.
    #[error("{message}")]
    Stream { message: String },
    /// A stream's connection ended before its last event: the output may go
    /// on, and a follow can resume from its cursor.
    #[error("the connection to the daemon ended in the middle of a stream")]
    StreamEnded,
    /// An event of a stream that is not what the wire contract says.
    #[error("malformed {event:?} event from the daemon: {reason}")]
    InvalidEvent { event: String, reason: String },
    /// A header of a files answer that is not what the wire contract says.
    #[error("malformed {header} header from the daemon: {value:?}")]
    InvalidHeader { header: String, value: String },
    /// A download ended before the length the daemon announced.
    #[error("the download ended after {got} of {expected} bytes")]
    ShortBody { got: u64, expected: u64 },
    /// Reading the local source of an upload or writing the local
    /// destination of a download failed.
    #[error("local I/O failed")]
    Io(#[source] std::io::Error),
    #[error("WebSocket to the daemon failed")]
    WebSocket(#[source] Box<tokio_tungstenite::tungstenite::Error>),
}

impl ClientError {
    /// HTTP status of an error answer from the daemon, if that is what this is.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::InvalidResponse { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when nothing was listening at the address.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }

    /// True for a 401 answer: the daemon wants a (different) bearer token.
    pub fn is_unauthorized(&self) -> bool {
        self.status() == Some(StatusCode::UNAUTHORIZED)
    }

    /// True for a 404 answer (unknown sandbox, process, file or route).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }

    /// True when a stream broke off in a way that a new request may mend:
    /// the connection ended early or failed in transit. Answers of the
    /// daemon (4xx, `error` events) are not.
    pub fn is_interrupted(&self) -> bool {
        matches!(
            self,
            ClientError::StreamEnded
                | ClientError::Transport(_)
                | ClientError::TimedOut { .. }
                | ClientError::Unreachable { .. }
        )
    }

    /// The error for an answer with a non-2xx `status` and this `body`.
    pub(crate) fn from_answer(status: StatusCode, body: &[u8]) -> ClientError {
        let text = String::from_utf8_lossy(body);
        let message = match serde_json::from_slice::<ErrorBody>(body) {
            Ok(error) => error.error,
            Err(_) if text.trim().is_empty() => status
                .canonical_reason()
                .unwrap_or("request failed")
                .to_lowercase(),
            Err(_) => text.trim().to_string(),
        };
        ClientError::Api { status, message }
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(error: tokio_tungstenite::tungstenite::Error) -> Self {
        ClientError::WebSocket(Box::new(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_keep_the_daemons_message_and_status() {
        let e = ClientError::from_answer(StatusCode::CONFLICT, br#"{"error":"is a directory"}"#);
        assert_eq!(e.to_string(), "is a directory");
        assert_eq!(e.status(), Some(StatusCode::CONFLICT));
        let e = ClientError::from_answer(StatusCode::PAYLOAD_TOO_LARGE, b"");
        assert_eq!(e.to_string(), "payload too large");
        let e = ClientError::from_answer(StatusCode::BAD_GATEWAY, b" upstream down\n");
        assert_eq!(e.to_string(), "upstream down");
        assert!(ClientError::from_answer(StatusCode::NOT_FOUND, b"{}").is_not_found());
    }

    #[test]
    fn only_broken_connections_count_as_interrupted() {
        assert!(ClientError::StreamEnded.is_interrupted());
        let stream = ClientError::Stream {
            message: "sandbox deleted".into(),
        };
        assert!(!stream.is_interrupted());
        assert!(!ClientError::from_answer(StatusCode::NOT_FOUND, b"").is_interrupted());
    }
}
