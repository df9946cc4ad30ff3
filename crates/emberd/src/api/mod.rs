//! The public HTTP API (see `docs/api.md`).
//!
//! Owns routing, body limits and JSON parsing; [`error`] holds the one
//! mapping from errors to status codes and [`wire`] the conversion of the
//! manager's domain types to `emberd-api`'s. Handlers parse, call the
//! [`Manager`](crate::sandbox::Manager), and shape the answer; they hold no
//! lifecycle logic.

mod error;
mod wire;

pub use error::ApiError;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use emberd_api::{
    CreateSandboxRequest, CreateSandboxResponse, ExecRequest, ExecResponse, InfoResponse,
    SandboxInfo, SandboxList,
};
use serde::de::DeserializeOwned;

use crate::sandbox::Manager;

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
    Json(wire::info_response(manager.info()))
}

async fn create(
    State(manager): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<CreateSandboxResponse>), ApiError> {
    let request: CreateSandboxRequest = parse_body(body, CREATE_BODY_LIMIT, true)?;
    let id = manager.create_with(wire::create_params(request)).await?;
    Ok((StatusCode::CREATED, Json(CreateSandboxResponse { id })))
}

async fn exec(
    State(manager): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ExecResponse>, ApiError> {
    // An unknown sandbox is a 404 whatever the body says.
    manager.check_exists(&id)?;
    let request: ExecRequest = parse_body(body, EXEC_BODY_LIMIT, false)?;
    let outcome = manager.exec(&id, wire::exec_params(request)?).await?;
    Ok(Json(wire::exec_response(outcome)))
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
        sandboxes: manager.list().into_iter().map(wire::sandbox_info).collect(),
    })
}

async fn get_one(
    State(manager): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SandboxInfo>, ApiError> {
    Ok(Json(wire::sandbox_info(manager.get(&id)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

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
