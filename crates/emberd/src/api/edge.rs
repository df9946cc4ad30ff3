//! The layers every request passes before a route: a panic catcher (500,
//! and the daemon keeps serving), the `Host`/`Origin` checks, CORS for the
//! allowed origins, the bearer token, and the bound on requests served at
//! once. Decides who may call and how many at a time; knows nothing of
//! sandboxes.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::Semaphore;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

use super::auth::Tokens;
use super::origin::{OriginPolicy, Refusal};
use super::ApiError;

/// Requests served at once unless `--max-concurrent-requests` says otherwise.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 64;
/// Body read timeout unless `--body-read-timeout` says otherwise.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How the HTTP edge treats requests.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Bearer tokens; empty: no authentication (loopback binds only).
    pub tokens: Tokens,
    /// Allowed `Origin`s, and whether `Host` must name loopback.
    pub origins: OriginPolicy,
    /// Requests served at once; more get 429.
    pub max_concurrent_requests: usize,
    /// Longest time a request body may take to arrive.
    pub body_read_timeout: Duration,
}

impl Default for HttpConfig {
    /// No token, no allowed origin, loopback `Host` only: the defaults of a
    /// daemon on 127.0.0.1.
    fn default() -> Self {
        HttpConfig {
            tokens: Tokens::default(),
            origins: OriginPolicy::new::<_, &str>([], true),
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
        }
    }
}

/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

#[derive(Clone)]
struct Limit {
    permits: Arc<Semaphore>,
    max: usize,
}

/// Wraps `routes` in the edge layers; outermost first: panic catcher,
/// `Host`/`Origin` checks, CORS (when origins are allowed), token,
/// concurrency limit.
pub fn with_edge(routes: Router, config: &HttpConfig) -> Router {
    let max = config.max_concurrent_requests.max(1);
    let limit = Limit {
        permits: Arc::new(Semaphore::new(max)),
        max,
    };
    let mut router = routes
        .layer(middleware::from_fn_with_state(limit, limit_concurrency))
        .layer(middleware::from_fn_with_state(
            config.tokens.clone(),
            check_token,
        ));
    if let Some(cors) = cors(&config.origins) {
        // Outside the token check: a preflight carries no credentials.
        router = router.layer(cors);
    }
    router
        .layer(middleware::from_fn_with_state(
            config.origins.clone(),
            check_origin,
        ))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TraceLayer::new_for_http().make_span_with(super::trace::request_span))
}

/// CORS answers for the allowed origins, so that a page served from one can
/// call with its token; none when no origin is allowed.
fn cors(origins: &OriginPolicy) -> Option<CorsLayer> {
    let allowed: Vec<HeaderValue> = origins
        .allowed()
        .iter()
        .filter_map(|origin| HeaderValue::from_str(origin).ok())
        .collect();
    if allowed.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(allowed))
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(PREFLIGHT_MAX_AGE),
    )
}

/// A browser's request from a foreign page, or through a rebound name, is
/// refused whatever it carries.
async fn check_origin(
    State(origins): State<OriginPolicy>,
    request: Request,
    next: Next,
) -> Response {
    match origins.check(request.headers()) {
        Err(Refusal::Host) => ApiError::ForeignHost.into_response(),
        Err(Refusal::Origin) => ApiError::ForeignOrigin.into_response(),
        Ok(()) => next.run(request).await,
    }
}

/// `GET /healthz`: open, and never refused for being busy, so that a
/// supervisor does not take a busy daemon for a dead one.
fn is_health_check(request: &Request) -> bool {
    request.method() == Method::GET && request.uri().path() == "/healthz"
}

/// Every route but `GET /healthz` needs the token, when there is one.
async fn check_token(State(tokens): State<Tokens>, request: Request, next: Next) -> Response {
    if !is_health_check(&request) && !tokens.is_empty() && !tokens.authorizes(request.headers()) {
        return ApiError::Unauthorized.into_response();
    }
    next.run(request).await
}

/// Serves the request if a permit is free, else answers 429 at once: a
/// queue would only hold more connections open.
async fn limit_concurrency(State(limit): State<Limit>, request: Request, next: Next) -> Response {
    if is_health_check(&request) {
        return next.run(request).await;
    }
    let Ok(_permit) = limit.permits.clone().try_acquire_owned() else {
        return ApiError::TooManyRequests(limit.max).into_response();
    };
    next.run(request).await
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_owned());
    tracing::error!(panic = %message, "a request handler panicked");
    ApiError::Internal.into_response()
}
