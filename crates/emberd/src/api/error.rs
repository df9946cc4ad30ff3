//! The one mapping from errors to HTTP status codes, and the JSON error body.

use axum::http::StatusCode;
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
    #[error("no such route")]
    RouteNotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

impl ApiError {
    /// The one place where errors become status codes.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadJson(_) | ApiError::BadBody(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Sandbox(e) => match e {
                SandboxError::UnknownPack(_)
                | SandboxError::TimeoutTooLong { .. }
                | SandboxError::OverLimit { .. }
                | SandboxError::Invalid(_) => StatusCode::BAD_REQUEST,
                SandboxError::NotFound => StatusCode::NOT_FOUND,
                SandboxError::NotRunning(_)
                | SandboxError::Deleted(_)
                | SandboxError::Exited(_) => StatusCode::CONFLICT,
                SandboxError::AtCapacity { .. } => StatusCode::TOO_MANY_REQUESTS,
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
            ApiError::Sandbox(SandboxError::Exec(_) | SandboxError::AgentUnresponsive(_))
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
        if let ApiError::Sandbox(SandboxError::AtCapacity { retry_after, .. }) = &self {
            let seconds = retry_after.as_secs().max(1);
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
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
