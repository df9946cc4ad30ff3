//! `/mcp`: the MCP service (see `docs/mcp.md`) mounted behind the edge
//! layers like every other route. The tools are `crate::mcp`'s.

use std::sync::Arc;

use axum::Router;

use super::{AppState, EXEC_BODY_LIMIT};
use crate::sandbox::Manager;

/// One MCP request may carry as much as an exec (code and stdin) can.
pub(super) fn routes(manager: &Arc<Manager>) -> Router<AppState> {
    Router::new().route_service(
        "/mcp",
        crate::mcp::http::service(manager.clone(), EXEC_BODY_LIMIT),
    )
}
