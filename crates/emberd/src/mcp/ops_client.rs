//! [`SandboxOps`] over HTTP: a running daemon reached through
//! `emberd-client` (what `emberd mcp` serves on stdio). An error answer
//! becomes its `error` message; a daemon that is not there says so.

use async_trait::async_trait;
use emberd_api::{CreateSandboxResponse, ExecRequest, ExecResponse, FileList, WriteResult};
use emberd_client::{Client, ClientError, PutOptions, UploadBody};
use futures::StreamExt as _;

use super::ops::{FileBytes, OpsError, SandboxOps};

/// The operations as calls to the daemon `client` talks to.
#[derive(Debug, Clone)]
pub struct ClientOps {
    client: Client,
}

impl ClientOps {
    pub fn new(client: Client) -> Self {
        ClientOps { client }
    }
}

fn api(error: ClientError) -> OpsError {
    OpsError::Api(crate::error_chain::render(&error))
}

#[async_trait]
impl SandboxOps for ClientOps {
    async fn create(
        &self,
        language_pack: Option<String>,
    ) -> Result<CreateSandboxResponse, OpsError> {
        let id = self
            .client
            .create_sandbox(language_pack.as_deref())
            .await
            .map_err(api)?;
        Ok(CreateSandboxResponse { id })
    }

    async fn exec(&self, id: &str, request: ExecRequest) -> Result<ExecResponse, OpsError> {
        self.client.exec(id, &request).await.map_err(api)
    }

    async fn delete(&self, id: &str) -> Result<(), OpsError> {
        self.client.delete_sandbox(id).await.map_err(api)
    }

    async fn read_file(&self, id: &str, path: &str, limit: u64) -> Result<FileBytes, OpsError> {
        let too_large = |size| OpsError::FileTooLarge {
            path: path.to_owned(),
            size,
            limit,
        };
        let download = self.client.get_file(id, path).await.map_err(api)?;
        let announced = download.content_length();
        if let Some(size) = announced.filter(|&size| size > limit) {
            return Err(too_large(size));
        }
        let mut bytes = Vec::new();
        let mut stream = std::pin::pin!(download.into_stream());
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk.map_err(api)?);
            if bytes.len() as u64 > limit {
                return Err(too_large(announced.unwrap_or(bytes.len() as u64)));
            }
        }
        if let Some(expected) = announced.filter(|&n| (bytes.len() as u64) < n) {
            return Err(api(ClientError::ShortBody {
                got: bytes.len() as u64,
                expected,
            }));
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
        let options = PutOptions {
            mkdir: true,
            ..PutOptions::default()
        };
        self.client
            .put_file(id, path, UploadBody::from_bytes(content), &options)
            .await
            .map_err(api)
    }

    async fn list_files(
        &self,
        id: &str,
        path: &str,
        depth: Option<u32>,
    ) -> Result<FileList, OpsError> {
        self.client.list_files(id, path, depth).await.map_err(api)
    }
}
