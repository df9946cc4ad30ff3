//! The span every HTTP request runs in: method, path and, for the routes of
//! one sandbox, its id, so that every log line a request causes (in the
//! handler, the Manager, the tasks it spawns) names the sandbox.
//!
//! Owns only the span's shape; must never log request bodies or headers
//! (tokens travel in them).

use axum::body::Body;
use axum::http::Request;
use tracing::Span;

use crate::sandbox::is_sandbox_id;

/// Longest path written into a span; a longer one is cut.
const MAX_LOGGED_PATH: usize = 256;

/// The span for `request`. `sandbox` is left empty for routes not under
/// `/sandboxes/{id}`; a create fills it in once the id exists.
pub(super) fn request_span(request: &Request<Body>) -> Span {
    let path = request.uri().path();
    let shown = match path.char_indices().nth(MAX_LOGGED_PATH) {
        Some((end, _)) => &path[..end],
        None => path,
    };
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %shown,
        sandbox = tracing::field::Empty,
    );
    if let Some(id) = sandbox_in_path(path) {
        span.record("sandbox", id);
    }
    span
}

/// The sandbox id of a path under `/sandboxes/{id}`, when it is one.
fn sandbox_in_path(path: &str) -> Option<&str> {
    let mut segments = path.trim_start_matches('/').split('/');
    match (segments.next(), segments.next()) {
        (Some("sandboxes"), Some(id)) if is_sandbox_id(id) => Some(id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::sandbox_in_path;

    #[test]
    fn finds_the_sandbox_id_only_where_the_route_has_one() {
        assert_eq!(
            sandbox_in_path("/sandboxes/sb_0123456789ab"),
            Some("sb_0123456789ab")
        );
        assert_eq!(
            sandbox_in_path("/sandboxes/sb_0123456789ab/files/list"),
            Some("sb_0123456789ab")
        );
        assert_eq!(sandbox_in_path("/sandboxes"), None);
        assert_eq!(sandbox_in_path("/sandboxes/../etc"), None);
        assert_eq!(sandbox_in_path("/info"), None);
    }
}
