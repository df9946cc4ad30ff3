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
mod mcp;
mod metrics;
mod openapi;
pub mod origin;
mod processes;
mod server;
mod stream;
mod timing;
mod trace;
pub(crate) mod wire;

pub use body::{LINGER_BYTES, LINGER_TIME};
pub use edge::{with_edge, HttpConfig, DEFAULT_BODY_READ_TIMEOUT, DEFAULT_MAX_CONCURRENT_REQUESTS};
pub use error::ApiError;
pub use openapi::{document as openapi_document, document_json as openapi_json};
pub use server::{serve, DEFAULT_HEADER_READ_TIMEOUT};

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse as _;
use axum::{Json, Router};
use emberd_api::{
    CreateSandboxRequest, CreateSandboxResponse, ErrorBody, ExecRequest, ExecResponse,
    InfoResponse, SandboxInfo, SandboxList,
};
use serde::de::DeserializeOwned;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    /// The OpenAPI document this router serves, as JSON.
    openapi: Arc<str>,
}

/// The router with the default [`HttpConfig`] (no token, loopback `Host`
/// only), without a socket, so tests can drive it with `oneshot`.
pub fn app(manager: Arc<Manager>) -> Router {
    app_with(manager, &HttpConfig::default())
}

/// The router behind the edge layers `config` sets up.
pub fn app_with(manager: Arc<Manager>, config: &HttpConfig) -> Router {
    with_edge(routes(manager, config), config)
        .layer(axum::middleware::from_fn(timing::server_timing))
}

/// Every route with its OpenAPI operation: a route is added here (or in a
/// module's `routes()`) with `routes!`, which takes its path and methods
/// from the handler's `#[utoipa::path]`, so none is served undocumented.
fn documented_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(info))
        .routes(routes!(create, list))
        .routes(routes!(get_one, delete))
        .routes(routes!(exec))
        .merge(processes::routes())
        .merge(files::routes())
        .merge(metrics::routes())
        .merge(openapi::routes())
}

fn routes(manager: Arc<Manager>, config: &HttpConfig) -> Router {
    let (router, document) = documented_routes().split_for_parts();
    let document = openapi::finish(document, !config.tokens.is_empty());
    router
        // A service, not a handler: documented by `openapi::DocOnly`.
        .merge(mcp::routes(&manager))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(AppState {
            manager,
            body_read_timeout: config.body_read_timeout,
            openapi: openapi::to_json(&document).into(),
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

/// Liveness: open (no token) and never refused for being busy.
#[utoipa::path(get, path = "/healthz", tag = "daemon", operation_id = "healthz",
    security(()),
    responses((status = 200, description = "The daemon is serving", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `GET /healthz` body.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Health {
    /// Always "ok".
    #[schema(value_type = String, example = "ok")]
    status: &'static str,
}

/// The daemon's configuration and state: guest shape, boot path, packs.
#[utoipa::path(get, path = "/info", tag = "daemon", operation_id = "info",
    responses((status = 200, description = "The daemon's information", body = InfoResponse)))]
async fn info(State(state): State<AppState>) -> Json<InfoResponse> {
    Json(wire::info_response(state.manager.info()))
}

/// Creates a sandbox (a booted VM) and answers once it is ready.
#[utoipa::path(post, path = "/sandboxes", tag = "sandboxes", operation_id = "create_sandbox",
    request_body(content = CreateSandboxRequest, description = "An empty body means all defaults"),
    responses(
        (status = 201, description = "The sandbox is running", body = CreateSandboxResponse),
        (status = 400, description = "Invalid JSON, an unknown pack, a shape or TTL over the operator's maxima", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 413, description = "The body is over its limit (4 KiB)", body = ErrorBody),
        (status = 429, description = "At capacity (sandboxes or guest memory); see Retry-After", body = ErrorBody),
        (status = 500, description = "The VM did not boot", body = ErrorBody),
        (status = 503, description = "The daemon is shutting down", body = ErrorBody),
    ))]
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

/// Runs code in the sandbox: one JSON answer once it ends, or Server-Sent
/// Events (`stdout`, `stderr`, then `exit` or `error`) when the request
/// accepts `text/event-stream`.
#[utoipa::path(post, path = "/sandboxes/{id}/exec", tag = "sandboxes", operation_id = "exec",
    params(("id" = String, Path, description = "The sandbox's id")),
    request_body(content = ExecRequest),
    responses(
        (status = 200, description = "The exec ended (whatever its exit code), or its events as they happen",
            content(
                (ExecResponse = "application/json"),
                (String = "text/event-stream"),
            )),
        (status = 400, description = "Invalid JSON, a bad user, a timeout over the maximum", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "The sandbox is not running (booting, deleted, exited)", body = ErrorBody),
        (status = 413, description = "The body is over its limit (16 MiB)", body = ErrorBody),
        (status = 500, description = "The guest agent failed or stopped answering", body = ErrorBody),
    ))]
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

/// Deletes a sandbox: stops its VM and removes its files.
#[utoipa::path(delete, path = "/sandboxes/{id}", tag = "sandboxes", operation_id = "delete_sandbox",
    params(("id" = String, Path, description = "The sandbox's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such sandbox", body = ErrorBody),
    ))]
async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.manager.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every sandbox.
#[utoipa::path(get, path = "/sandboxes", tag = "sandboxes", operation_id = "list_sandboxes",
    responses((status = 200, description = "The sandboxes", body = SandboxList)))]
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

/// One sandbox, with the tail of its console.
#[utoipa::path(get, path = "/sandboxes/{id}", tag = "sandboxes", operation_id = "get_sandbox",
    params(("id" = String, Path, description = "The sandbox's id")),
    responses(
        (status = 200, description = "The sandbox", body = SandboxInfo),
        (status = 404, description = "No such sandbox", body = ErrorBody),
    ))]
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
