//! `GET /metrics`: the daemon's Prometheus metrics in the OpenMetrics text
//! format. Behind the same edge layers as every route (a token when one is
//! configured).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.manager.metrics_text(),
    )
}
