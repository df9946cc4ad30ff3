//! The `Server-Timing` header: how long the daemon held a request.
//!
//! The outermost layer of the router notes the time a request reaches it
//! and, once the inner layers and the handler have built the response,
//! adds `Server-Timing: app;dur=<ms>` (milliseconds with microsecond
//! digits). For a JSON answer that is the whole of the daemon's work (edge
//! checks, body read, parsing, the Manager, serialising the answer); for a
//! streamed one it ends when the head is ready. What it leaves out is the
//! HTTP connection's own reading and writing and the way over the network,
//! which a client measures as its time less this one. Reads and changes
//! nothing else of the request or the response.

use std::time::Instant;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

/// The header's name (lower case, as HTTP/1 headers are compared).
const SERVER_TIMING: &str = "server-timing";

/// Runs the rest of the stack and adds `Server-Timing` to its response.
pub(super) async fn server_timing(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let mut response = next.run(request).await;
    let value = format!("app;dur={:.3}", started.elapsed().as_secs_f64() * 1000.0);
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(SERVER_TIMING, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn every_answer_says_how_long_the_daemon_held_the_request() {
        let app = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    "done"
                }),
            )
            .layer(axum::middleware::from_fn(server_timing));
        let response = app
            .oneshot(Request::get("/slow").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let header = response.headers()[SERVER_TIMING].to_str().unwrap();
        let ms: f64 = header.strip_prefix("app;dur=").unwrap().parse().unwrap();
        assert!(ms >= 20.0, "{header}");
    }
}
