//! The public HTTP API (DESIGN.md §6).
//!
//! Owns routing, body limits, JSON parsing and the one mapping from errors
//! to status codes ([`ApiError`]). Handlers parse, call the
//! [`Manager`](crate::sandbox::Manager), and shape the answer; they hold no
//! lifecycle logic.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use emberd_api::{
    CreateSandboxRequest, CreateSandboxResponse, ErrorBody, ExecRequest, ExecResponse,
    InfoResponse, SandboxInfo, SandboxList,
};
use serde::de::DeserializeOwned;

use crate::sandbox::{ExecParams, Manager, SandboxError};

/// Largest `POST /sandboxes` body.
pub const CREATE_BODY_LIMIT: usize = 4 * 1024;
/// Largest `POST /sandboxes/{id}/exec` body: room for several MiB of code
/// and stdin even when JSON escaping inflates them.
pub const EXEC_BODY_LIMIT: usize = 16 * 1024 * 1024;

type AppState = Arc<Manager>;

/// The router, without a socket, so tests can drive it with `oneshot`.
pub fn app(manager: Arc<Manager>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/info", get(info))
        .route(
            "/sandboxes",
            post(create)
                .layer(DefaultBodyLimit::max(CREATE_BODY_LIMIT))
                .get(list),
        )
        .route("/sandboxes/{id}", get(get_one).delete(delete))
        .route(
            "/sandboxes/{id}/exec",
            post(exec).layer(DefaultBodyLimit::max(EXEC_BODY_LIMIT)),
        )
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(manager)
}

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
                SandboxError::UnknownPack(_) | SandboxError::InvalidRequest(_) => {
                    StatusCode::BAD_REQUEST
                }
                SandboxError::NotFound => StatusCode::NOT_FOUND,
                SandboxError::NotRunning(_) | SandboxError::Deleted(_) => StatusCode::CONFLICT,
                SandboxError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
                SandboxError::Boot(_)
                | SandboxError::SandboxDir { .. }
                | SandboxError::AgentUnresponsive(_)
                | SandboxError::Exec(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = ErrorBody {
            error: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

/// Parses a JSON body; an empty body is the type's default when allowed.
fn parse_body<T: DeserializeOwned + Default>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
    empty_is_default: bool,
) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge(limit)
        } else {
            ApiError::BadBody(rejection.body_text())
        }
    })?;
    if empty_is_default && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::BadJson(e.to_string()))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn info(State(manager): State<AppState>) -> Json<InfoResponse> {
    Json(manager.info())
}

async fn create(
    State(manager): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<CreateSandboxResponse>), ApiError> {
    let request: CreateSandboxRequest = parse_body(body, CREATE_BODY_LIMIT, true)?;
    let id = manager.create(request.pack()).await?;
    Ok((StatusCode::CREATED, Json(CreateSandboxResponse { id })))
}

async fn exec(
    State(manager): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ExecResponse>, ApiError> {
    // An unknown sandbox is a 404 whatever the body says.
    manager.get(&id)?;
    let request: ExecRequest = parse_body(body, EXEC_BODY_LIMIT, false)?;
    let params = ExecParams {
        code: request.code,
        stdin: request.stdin,
        timeout_ms: request.timeout_ms,
    };
    Ok(Json(manager.exec(&id, params).await?))
}

async fn delete(
    State(manager): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    manager.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list(State(manager): State<AppState>) -> Json<SandboxList> {
    Json(SandboxList {
        sandboxes: manager.list(),
    })
}

async fn get_one(
    State(manager): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SandboxInfo>, ApiError> {
    Ok(Json(manager.get(&id)?))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            status(SandboxError::InvalidRequest("x".into())),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status(SandboxError::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            status(SandboxError::NotRunning("booting")),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(SandboxError::Deleted("booting")),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(SandboxError::ShuttingDown),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(SandboxError::Boot("x".into())),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            status(SandboxError::AgentUnresponsive(std::time::Duration::ZERO)),
            StatusCode::INTERNAL_SERVER_ERROR
        );
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

    #[test]
    fn empty_create_body_means_defaults_and_bad_json_is_rejected() {
        let empty: CreateSandboxRequest =
            parse_body(Ok(Bytes::from_static(b"  ")), CREATE_BODY_LIMIT, true).unwrap();
        assert_eq!(empty.pack(), "python");
        let bad = parse_body::<CreateSandboxRequest>(
            Ok(Bytes::from_static(b"{nope")),
            CREATE_BODY_LIMIT,
            true,
        );
        assert!(matches!(bad, Err(ApiError::BadJson(_))));
        let unknown_field = parse_body::<CreateSandboxRequest>(
            Ok(Bytes::from_static(br#"{"langauge_pack":"python"}"#)),
            CREATE_BODY_LIMIT,
            true,
        );
        assert!(matches!(unknown_field, Err(ApiError::BadJson(_))));
    }
}
