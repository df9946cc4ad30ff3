//! MCP over streamable HTTP, for the daemon's `/mcp` route: a tower
//! service whose every request gets a fresh [`SandboxTools`] over the
//! Manager.
//!
//! Stateless and answered with plain JSON: no MCP session is kept between
//! requests and no stream stays open, so nothing is held for a client that
//! goes away and nothing has to be drained at shutdown. Who may call (the
//! token, `Host` and `Origin`) is decided by the API's edge layers before a
//! request gets here, so the SDK's own `Host` check is off: it would
//! refuse the names an operator allowed with a token.

use std::sync::Arc;

use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use super::ops_manager::ManagerOps;
use super::tools::SandboxTools;
use crate::sandbox::Manager;

/// The `/mcp` service; `max_body_bytes` bounds one request's JSON.
pub fn service(
    manager: Arc<Manager>,
    max_body_bytes: usize,
) -> StreamableHttpService<SandboxTools, LocalSessionManager> {
    let ops = Arc::new(ManagerOps::new(manager));
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .disable_allowed_hosts()
        .disable_allowed_origins()
        .with_max_request_body_bytes(max_body_bytes);
    StreamableHttpService::new(
        move || Ok(SandboxTools::new(ops.clone())),
        Arc::default(),
        config,
    )
}
