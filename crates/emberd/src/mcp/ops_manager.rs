//! [`SandboxOps`] in-process: the daemon's own [`Manager`], called
//! directly (what `/mcp` serves), never through the daemon's HTTP port.
//! Answers are shaped by `api::wire`, the one conversion to the API's
//! types, and errors carry the text the API would answer with.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use emberd_api::{
    CreateSandboxRequest, CreateSandboxResponse, ExecRequest, ExecResponse, FileList, WriteResult,
};
use futures::StreamExt as _;

use super::ops::{FileBytes, OpsError, SandboxOps};
use crate::api::wire;
use crate::guest::files::{Owner, UploadTarget};
use crate::sandbox::{Manager, SandboxError};

/// The operations as calls on the Manager.
#[derive(Clone)]
pub struct ManagerOps {
    manager: Arc<Manager>,
}

impl ManagerOps {
    pub fn new(manager: Arc<Manager>) -> Self {
        ManagerOps { manager }
    }
}

/// The message `api/error.rs` answers for this error (its `ApiError` is
/// transparent over a `SandboxError`).
fn api(error: SandboxError) -> OpsError {
    OpsError::Api(crate::error_chain::render(&error))
}

#[async_trait]
impl SandboxOps for ManagerOps {
    async fn create(
        &self,
        language_pack: Option<String>,
    ) -> Result<CreateSandboxResponse, OpsError> {
        let request = CreateSandboxRequest {
            language_pack,
            ..CreateSandboxRequest::default()
        };
        let id = self
            .manager
            .create_with(wire::create_params(request))
            .await
            .map_err(api)?;
        Ok(CreateSandboxResponse { id })
    }

    async fn exec(&self, id: &str, request: ExecRequest) -> Result<ExecResponse, OpsError> {
        let params = wire::exec_params(request).map_err(api)?;
        let outcome = self.manager.exec(id, params).await.map_err(api)?;
        Ok(wire::exec_response(outcome))
    }

    async fn delete(&self, id: &str) -> Result<(), OpsError> {
        self.manager.delete(id).await.map_err(api)
    }

    async fn read_file(&self, id: &str, path: &str, limit: u64) -> Result<FileBytes, OpsError> {
        let too_large = |size| OpsError::FileTooLarge {
            path: path.to_owned(),
            size,
            limit,
        };
        let (stat, stream) = self.manager.file_download(id, path).await.map_err(api)?;
        if stat.size > limit {
            return Err(too_large(stat.size));
        }
        let mut bytes = Vec::new();
        let mut stream = std::pin::pin!(stream);
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk.map_err(api)?);
            // The stream ends at the size of the stat; this only guards it.
            if bytes.len() as u64 > limit {
                return Err(too_large(bytes.len() as u64));
            }
        }
        Ok(FileBytes {
            path: path.to_owned(),
            bytes,
        })
    }

    async fn write_file(
        &self,
        id: &str,
        path: &str,
        content: Vec<u8>,
    ) -> Result<WriteResult, OpsError> {
        let target = UploadTarget::File {
            path: path.to_owned(),
            mode: None,
            make_parents: true,
            owner: Owner::Sandbox,
        };
        let declared = content.len() as u64;
        let mut upload = self
            .manager
            .file_upload(id, target, Some(declared))
            .await
            .map_err(api)?;
        if let Err(e) = upload.send(Bytes::from(content)).await {
            upload.abandon().await;
            return Err(api(e));
        }
        let reply = upload.finish().await.map_err(api)?;
        Ok(WriteResult {
            path: path.to_owned(),
            bytes: reply.bytes,
            entries: reply.entries,
        })
    }

    async fn list_files(
        &self,
        id: &str,
        path: &str,
        depth: Option<u32>,
    ) -> Result<FileList, OpsError> {
        let listing = self.manager.file_list(id, path, depth).await.map_err(api)?;
        Ok(FileList {
            entries: listing.entries.into_iter().map(wire::file_entry).collect(),
            truncated: listing.truncated,
        })
    }
}
