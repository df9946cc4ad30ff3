//! `GET /metrics`: the daemon's Prometheus metrics in the OpenMetrics text
//! format. Behind the same edge layers as every route (a token when one is
//! configured).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// The daemon's metrics in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "daemon", operation_id = "metrics",
    responses((status = 200, description = "Prometheus metrics",
        content((String = "application/openmetrics-text; version=1.0.0; charset=utf-8")))))]

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.manager.metrics_text(),
    )
}
