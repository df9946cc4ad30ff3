//! The one mapping from errors to HTTP status codes, and the JSON error body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use emberd_api::ErrorBody;

use crate::sandbox::SandboxError;

/// Every error the API answers with, and its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid JSON: {0}")]
    BadJson(String),
    #[error("request body too large (limit {0} bytes)")]
    BodyTooLarge(usize),
    #[error("cannot read the request body: {0}")]
    BadBody(String),
    #[error("the request body did not arrive within {}", humantime::format_duration(*.0))]
    BodyTimeout(std::time::Duration),
    /// An upload whose client sent nothing for this long.
    #[error("the upload stalled: no data for {}", humantime::format_duration(*.0))]
    BodyStalled(std::time::Duration),
    #[error("invalid query: {0}")]
    BadQuery(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("requests from this Origin are not allowed")]
    ForeignOrigin,
    #[error("the Host header does not name this daemon's loopback address")]
    ForeignHost,
    #[error("too many requests in flight (limit {0}); retry later")]
    TooManyRequests(usize),
    #[error("internal error")]
    Internal,
    #[error("no such route")]
    RouteNotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("this route needs a WebSocket upgrade request (GET with Upgrade: websocket)")]
    WebSocketRequired,
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

impl ApiError {
    /// The one place where errors become status codes.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadJson(_)
            | ApiError::BadBody(_)
            | ApiError::BadQuery(_)
            | ApiError::WebSocketRequired => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) | ApiError::BodyStalled(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::ForeignOrigin | ApiError::ForeignHost => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Sandbox(e) => match e {
                SandboxError::UnknownPack(_)
                | SandboxError::TimeoutTooLong { .. }
                | SandboxError::OverLimit { .. }
                | SandboxError::Invalid(_)
                | SandboxError::ProcessLaunch(_)
                | SandboxError::CursorBeyondEnd(_)
                | SandboxError::BadPath(_) => StatusCode::BAD_REQUEST,
                SandboxError::NotFound
                | SandboxError::ProcessNotFound(_)
                | SandboxError::NoSuchFile(_) => StatusCode::NOT_FOUND,
                SandboxError::NotRunning(_)
                | SandboxError::Deleted(_)
                | SandboxError::Exited(_)
                | SandboxError::ProcessNotRunning(_)
                | SandboxError::StdinNotOpen(_)
                | SandboxError::StdinClosed(_)
                | SandboxError::NoTerminal(_)
                | SandboxError::FileConflict(_)
                | SandboxError::MissingCapability { .. } => StatusCode::CONFLICT,
                SandboxError::NoSpace | SandboxError::TransferTooLarge { .. } => {
                    StatusCode::PAYLOAD_TOO_LARGE
                }
                SandboxError::AtCapacity { .. } | SandboxError::TooManyProcesses { .. } => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                // The guest misbehaved: no fault of the daemon's.
                SandboxError::Files(_) => StatusCode::BAD_GATEWAY,
                SandboxError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
                SandboxError::Boot(_)
                | SandboxError::SandboxDir { .. }
                | SandboxError::AgentUnresponsive(_)
                | SandboxError::Exec(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }
}

impl ApiError {
    /// True for failures of the guest (its agent's answers or silence),
    /// whose messages are the guest's words.
    fn caused_by_the_guest(&self) -> bool {
        matches!(
            self,
            ApiError::Sandbox(
                SandboxError::Exec(_) | SandboxError::AgentUnresponsive(_) | SandboxError::Files(_)
            )
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = crate::error_chain::render(&self);
        if self.caused_by_the_guest() {
            // What a guest says is no daemon error, and a guest may fail
            // every request: warn, rationed, else debug.
            if crate::guest::guest_warning_allowed() {
                tracing::warn!(error = %message, "request failed in the guest");
            } else {
                tracing::debug!(error = %message, "request failed in the guest");
            }
        } else if status.is_server_error() {
            tracing::error!(error = %message, "request failed");
        }
        let body = ErrorBody { error: message };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::Sandbox(SandboxError::AtCapacity { retry_after, .. }) => {
                let seconds = retry_after.as_secs().max(1);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            ApiError::TooManyRequests(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            }
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The rest of the body may still be on its way: the connection
            // cannot carry another request.
            ApiError::BodyTooLarge(_)
            | ApiError::BodyTimeout(_)
            | ApiError::BodyStalled(_)
            | ApiError::Sandbox(SandboxError::TransferTooLarge { .. }) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{BootError, Interrupted, SandboxState};

    fn status(e: SandboxError) -> StatusCode {
        ApiError::Sandbox(e).status()
    }

    #[test]
    fn every_error_has_its_status() {
        assert_eq!(
            ApiError::BadJson("x".into()).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            ApiError::BadBody("x".into()).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            ApiError::BodyTooLarge(1).status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(ApiError::RouteNotFound.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            ApiError::MethodNotAllowed.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(SandboxError::UnknownPack("ruby".into())),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(SandboxError::TimeoutTooLong { max_ms: 1 }),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status(SandboxError::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            status(SandboxError::NotRunning(SandboxState::Booting)),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(SandboxError::Deleted(Interrupted::Boot)),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(SandboxError::Exited("guest panicked".into())),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(SandboxError::OverLimit {
                field: "vcpus",
                value: 9,
                max: 8
            }),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(SandboxError::Invalid("x".into())),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(SandboxError::AtCapacity {
                what: "x".into(),
                retry_after: std::time::Duration::from_secs(1)
            }),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            status(SandboxError::ShuttingDown),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(SandboxError::Boot(BootError::Unhealthy)),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            status(SandboxError::AgentUnresponsive(std::time::Duration::ZERO)),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn file_errors_are_clear_4xx_and_guest_faults_502() {
        use crate::guest::files::FilesError;
        use crate::guest::GuestError;
        assert_eq!(
            status(SandboxError::BadPath("relative".into())),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            ApiError::BadQuery("x".into()).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(SandboxError::NoSuchFile("/x".into())),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ApiError::Sandbox(SandboxError::NoSuchFile("/x".into())).to_string(),
            "no such file: /x"
        );
        for conflict in [
            SandboxError::FileConflict("/d is a directory (ask with format=tar)".into()),
            SandboxError::MissingCapability {
                feature: "tar transfers",
                capability: "tar",
            },
            SandboxError::Deleted(Interrupted::Transfer),
        ] {
            assert_eq!(status(conflict), StatusCode::CONFLICT);
        }
        assert_eq!(status(SandboxError::NoSpace), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            ApiError::Sandbox(SandboxError::NoSpace).to_string(),
            "no space left in the sandbox"
        );
        let too_large = ApiError::Sandbox(SandboxError::TransferTooLarge { limit_mib: 1 });
        assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            too_large.into_response().headers()[header::CONNECTION],
            "close"
        );
        let broken =
            SandboxError::Files(FilesError::Guest(GuestError::NoExit { call: "ReadFile" }));
        assert_eq!(status(broken), StatusCode::BAD_GATEWAY);
        let stalled = ApiError::BodyStalled(std::time::Duration::from_secs(60));
        assert_eq!(stalled.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(
            stalled.into_response().headers()[header::CONNECTION],
            "close"
        );
    }

    #[test]
    fn capacity_answers_say_when_to_retry() {
        let response = ApiError::Sandbox(SandboxError::AtCapacity {
            what: "32 sandboxes (--max-sandboxes)".into(),
            retry_after: std::time::Duration::from_secs(2),
        })
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[axum::http::header::RETRY_AFTER], "2");
    }

    #[test]
    fn edge_refusals_carry_their_status_and_headers() {
        let response = ApiError::Unauthorized.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        for refusal in [ApiError::ForeignOrigin, ApiError::ForeignHost] {
            assert_eq!(refusal.status(), StatusCode::FORBIDDEN);
        }
        let response = ApiError::TooManyRequests(8).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        for unread in [
            ApiError::BodyTooLarge(1),
            ApiError::BodyTimeout(std::time::Duration::from_secs(60)),
        ] {
            let response = unread.into_response();
            assert_eq!(response.headers()[header::CONNECTION], "close");
        }
        assert_eq!(
            ApiError::BodyTimeout(std::time::Duration::from_secs(60)).status(),
            StatusCode::REQUEST_TIMEOUT
        );
        assert_eq!(
            ApiError::Internal.status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(ApiError::Internal.to_string(), "internal error");
    }

    #[test]
    fn messages_match_the_original_api() {
        assert_eq!(
            ApiError::Sandbox(SandboxError::UnknownPack("ruby".into())).to_string(),
            r#"unknown language pack: "ruby""#
        );
        assert_eq!(
            ApiError::Sandbox(SandboxError::NotFound).to_string(),
            "sandbox not found"
        );
    }
}
