//! The public HTTP API (see `docs/api.md`).
//!
//! Owns routing, body limits and JSON parsing; [`error`] holds the one
//! mapping from errors to status codes and [`wire`] the conversion of the
//! manager's domain types to `emberd-api`'s; [`edge`] wraps the routes in
//! the layers every request passes (panics, `Host`/`Origin`, tokens,
//! concurrency), [`body`] reads bodies within bounds and [`server`] is the
//! connection loop; `stream` answers the streamed exec (SSE), `processes`
//! and `attach` the background-process routes. Handlers parse, call the
//! [`Manager`](crate::sandbox::Manager), and shape the answer; they hold no
//! lifecycle logic.

mod attach;
pub mod auth;
mod body;
mod edge;
mod error;
mod files;
mod metrics;
pub mod origin;
mod processes;
mod server;
mod stream;
mod timing;
mod wire;

pub use body::{LINGER_BYTES, LINGER_TIME};
pub use edge::{with_edge, HttpConfig, DEFAULT_BODY_READ_TIMEOUT, DEFAULT_MAX_CONCURRENT_REQUESTS};
pub use error::ApiError;
pub use server::{serve, DEFAULT_HEADER_READ_TIMEOUT};

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse as _;
use axum::routing::{get, post};
use axum::{Json, Router};
use emberd_api::{
    CreateSandboxRequest, CreateSandboxResponse, ExecRequest, InfoResponse, SandboxInfo,
    SandboxList,
};
use serde::de::DeserializeOwned;

use crate::sandbox::Manager;

/// Largest `POST /sandboxes` body.
pub const CREATE_BODY_LIMIT: usize = 4 * 1024;
/// Largest `POST /sandboxes/{id}/exec` body: room for several MiB of code
/// and stdin even when JSON escaping inflates them.
pub const EXEC_BODY_LIMIT: usize = 16 * 1024 * 1024;

#[derive(Clone)]
struct AppState {
    manager: Arc<Manager>,
    body_read_timeout: Duration,
}

/// The router with the default [`HttpConfig`] (no token, loopback `Host`
/// only), without a socket, so tests can drive it with `oneshot`.
pub fn app(manager: Arc<Manager>) -> Router {
    app_with(manager, &HttpConfig::default())
}

/// The router behind the edge layers `config` sets up.
pub fn app_with(manager: Arc<Manager>, config: &HttpConfig) -> Router {
    with_edge(routes(manager, config.body_read_timeout), config)
        .layer(axum::middleware::from_fn(timing::server_timing))
}

fn routes(manager: Arc<Manager>, body_read_timeout: Duration) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/info", get(info))
        .route("/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(get_one).delete(delete))
        .route("/sandboxes/{id}/exec", post(exec))
        .merge(processes::routes())
        .merge(files::routes())
        .merge(metrics::routes())
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(AppState {
            manager,
            body_read_timeout,
        })
}

/// Parses a JSON body; an empty body is the type's default when allowed.
fn parse_body<T: DeserializeOwned + Default>(
    body: &Bytes,
    empty_is_default: bool,
) -> Result<T, ApiError> {
    if empty_is_default && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadJson(e.to_string()))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn info(State(state): State<AppState>) -> Json<InfoResponse> {
    Json(wire::info_response(state.manager.info()))
}

async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<CreateSandboxResponse>), ApiError> {
    let body =
        body::read_bounded(&headers, body, CREATE_BODY_LIMIT, state.body_read_timeout).await?;
    let request: CreateSandboxRequest = parse_body(&body, true)?;
    let id = state
        .manager
        .create_with(wire::create_params(request))
        .await?;
    Ok((StatusCode::CREATED, Json(CreateSandboxResponse { id })))
}

async fn exec(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::response::Response, ApiError> {
    // An unknown sandbox is a 404 whatever the body says, before a byte of
    // it is read: the body is only a stream here.
    state.manager.check_exists(&id)?;
    let body = body::read_bounded(&headers, body, EXEC_BODY_LIMIT, state.body_read_timeout).await?;
    let request: ExecRequest = parse_body(&body, false)?;
    if stream::wants_events(&headers) {
        return stream::exec_events(&state, &id, request).await;
    }
    let outcome = state.manager.exec(&id, wire::exec_params(request)?).await?;
    Ok(Json(wire::exec_response(outcome)).into_response())
}

async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.manager.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list(State(state): State<AppState>) -> Json<SandboxList> {
    Json(SandboxList {
        sandboxes: state
            .manager
            .list()
            .into_iter()
            .map(wire::sandbox_info)
            .collect(),
    })
}

async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SandboxInfo>, ApiError> {
    Ok(Json(wire::sandbox_info(state.manager.get(&id)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_create_body_means_defaults_and_bad_json_is_rejected() {
        let empty: CreateSandboxRequest = parse_body(&Bytes::from_static(b"  "), true).unwrap();
        assert_eq!(empty.pack(), "python");
        let bad = parse_body::<CreateSandboxRequest>(&Bytes::from_static(b"{nope"), true);
        assert!(matches!(bad, Err(ApiError::BadJson(_))));
        let unknown_field = parse_body::<CreateSandboxRequest>(
            &Bytes::from_static(br#"{"langauge_pack":"python"}"#),
            true,
        );
        assert!(matches!(unknown_field, Err(ApiError::BadJson(_))));
    }
}
