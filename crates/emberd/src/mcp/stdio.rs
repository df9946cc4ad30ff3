//! `emberd mcp`: MCP over stdio as a client of a running daemon. Reads
//! JSON-RPC on stdin and answers on stdout (logs go to stderr); ends when
//! stdin closes.

use std::sync::Arc;

use rmcp::ServiceExt as _;

use super::ops_client::ClientOps;
use super::tools::SandboxTools;
use crate::config::McpArgs;

/// Why `emberd mcp` stopped.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("invalid daemon address")]
    Address(#[source] emberd_client::ClientError),
    #[error("the MCP session could not start")]
    Start(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the MCP session failed")]
    Session(#[source] tokio::task::JoinError),
}

/// Serves the tools on stdin/stdout until the client closes stdin.
pub async fn run(args: McpArgs) -> Result<(), StdioError> {
    let mut client = emberd_client::Client::new(args.addr()).map_err(StdioError::Address)?;
    if let Some(token) = args.token.filter(|t| !t.is_empty()) {
        client = client.with_token(token);
    }
    tracing::info!(daemon = %client.base_url(), "serving MCP on stdio");
    let tools = SandboxTools::new(Arc::new(ClientOps::new(client)));
    let running = tools
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| StdioError::Start(Box::new(e)))?;
    running.waiting().await.map_err(StdioError::Session)?;
    Ok(())
}
