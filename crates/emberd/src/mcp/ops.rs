//! [`SandboxOps`]: the sandbox operations the MCP tools need, answered in
//! the HTTP API's shapes (`emberd-api`), whoever carries them out: a daemon
//! over HTTP (`emberd mcp`) or the Manager in-process (`/mcp`). Knows no
//! transport and no MCP.

use async_trait::async_trait;
use emberd_api::{CreateSandboxResponse, ExecRequest, ExecResponse, FileList, WriteResult};

/// Why an operation failed: the API's message (its `error` field, or the
/// same text rendered from the Manager's error), which the tools hand on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpsError {
    /// The daemon (or the Manager) refused or failed the call.
    #[error("{0}")]
    Api(String),
    /// `read_file` on a file larger than the tool returns.
    #[error(
        "{path} is {size} bytes; read_file returns at most {limit} bytes \
         (download larger files with GET /sandboxes/{{id}}/files?path=)"
    )]
    FileTooLarge { path: String, size: u64, limit: u64 },
}

/// A file's bytes as `read_file` returns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileBytes {
    pub path: String,
    pub bytes: Vec<u8>,
}

/// The operations behind the tools. Every method answers in the API's
/// shapes so that both transports return the same JSON.
#[async_trait]
pub trait SandboxOps: Send + Sync + 'static {
    /// `POST /sandboxes` with this pack (`None`: the daemon's default).
    async fn create(
        &self,
        language_pack: Option<String>,
    ) -> Result<CreateSandboxResponse, OpsError>;

    /// `POST /sandboxes/{id}/exec`, output collected.
    async fn exec(&self, id: &str, request: ExecRequest) -> Result<ExecResponse, OpsError>;

    /// `DELETE /sandboxes/{id}`.
    async fn delete(&self, id: &str) -> Result<(), OpsError>;

    /// `GET /sandboxes/{id}/files?path=`, refused with
    /// [`OpsError::FileTooLarge`] when the file is over `limit` bytes.
    async fn read_file(&self, id: &str, path: &str, limit: u64) -> Result<FileBytes, OpsError>;

    /// `PUT /sandboxes/{id}/files?path=&mkdir=true`: writes `content`,
    /// making missing parent directories.
    async fn write_file(
        &self,
        id: &str,
        path: &str,
        content: Vec<u8>,
    ) -> Result<WriteResult, OpsError>;

    /// `GET /sandboxes/{id}/files/list?path=&depth=`.
    async fn list_files(
        &self,
        id: &str,
        path: &str,
        depth: Option<u32>,
    ) -> Result<FileList, OpsError>;
}
