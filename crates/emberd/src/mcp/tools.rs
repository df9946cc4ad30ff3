//! The MCP tools and the server that lists them: argument types, truthful
//! descriptions, and results in the API's JSON shapes. An operation that
//! fails becomes a tool error (`isError: true`) carrying the API's message,
//! never a protocol error. What each tool does is [`SandboxOps`]' business.

use std::sync::Arc;

use base64::Engine as _;
use emberd_api::{ExecRequest, ExecResponse};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{tool, tool_handler, tool_router, ErrorData, ServerHandler};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ops::{OpsError, SandboxOps};

/// Largest file `read_file` returns, in bytes (1 MiB); larger files are
/// refused with an error that names the files API.
pub const READ_FILE_LIMIT: u64 = 1024 * 1024;

/// Where `list_files` looks when no path is given: the sandbox user's home.
pub const DEFAULT_LIST_PATH: &str = "/home/sandbox";

const INSTRUCTIONS: &str = "emberd runs code in throw-away microVM sandboxes. \
Create a sandbox with create_sandbox, run code in it with exec_code, and delete it with \
delete_sandbox when done; run_code does all three in one call. Each exec_code call is a \
fresh process: variables, imports and functions do not survive between calls (this daemon \
has no persistent contexts), but files written in a sandbox stay until it is deleted. \
A sandbox nobody uses is deleted after its idle timeout (the daemon's --idle-timeout-s, \
30 minutes by default). Code runs as an unprivileged user whose home is /home/sandbox.";

const CREATE_SANDBOX: &str = "Create a new sandbox (a microVM) with a language pack and \
return its id as {\"id\": ...}. Files written in it persist until it is deleted; it is \
deleted automatically after its idle timeout. Delete it with delete_sandbox when done.";

const EXEC_CODE: &str = "Run code in an existing sandbox with the pack's interpreter (python \
runs Python, node runs JavaScript, shell runs sh) and return {stdout, stderr, exit_code, duration_ms, error, \
stdout_truncated, stderr_truncated}. Each call is a new process: variables and imports do \
NOT persist between calls (there are no persistent contexts); files written to disk do. \
exit_code is -1 with error set when the run timed out or was killed. Output beyond the \
daemon's per-stream cap is cut and flagged *_truncated.";

const DELETE_SANDBOX: &str = "Delete a sandbox: stop its microVM and discard its files. \
Returns {\"id\": ..., \"deleted\": true}.";

const RUN_CODE: &str = "Run code once in a fresh sandbox: create it, run the code, delete it \
(deleted even when the run fails). Returns the same object as exec_code. Nothing survives \
the call; use create_sandbox and exec_code to keep files between runs.";

const READ_FILE: &str = "Read a file from a sandbox. Returns {path, size, encoding, content}: \
content is the text when the file is UTF-8 (encoding \"utf-8\"), else base64 (encoding \
\"base64\"). Files over 1 MiB are refused; use the daemon's files API for those.";

const WRITE_FILE: &str = "Write a file in a sandbox, replacing any file at that path and \
making missing parent directories; the file belongs to the sandbox user. Returns \
{path, bytes}. The file stays until the sandbox is deleted, so later exec_code calls can \
read it.";

const LIST_FILES: &str = "List the entries under a directory in a sandbox, depth levels down \
(default 1). Returns {entries: [{path, name, type, size, mode, mtime, link_target}], \
truncated}; truncated is set when the listing hit the daemon's bound on entries.";

/// Arguments of `create_sandbox`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct CreateSandboxArgs {
    /// Language pack, "python", "node" or "shell" (default: "python").
    #[serde(default)]
    pub language_pack: Option<String>,
}

/// Arguments of `exec_code`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ExecCodeArgs {
    /// Id returned by create_sandbox.
    pub sandbox_id: String,
    /// Source code to run with the sandbox's interpreter.
    pub code: String,
    /// Text given to the program on standard input.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Time limit of the run in milliseconds (default: the daemon's, 30000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Arguments of `delete_sandbox`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct DeleteSandboxArgs {
    /// Id returned by create_sandbox.
    pub sandbox_id: String,
}

/// Arguments of `run_code`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunCodeArgs {
    /// Source code to run.
    pub code: String,
    /// Language pack, "python", "node" or "shell" (default: "python").
    #[serde(default)]
    pub language_pack: Option<String>,
    /// Text given to the program on standard input.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Time limit of the run in milliseconds (default: the daemon's, 30000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Arguments of `read_file`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ReadFileArgs {
    /// Id returned by create_sandbox.
    pub sandbox_id: String,
    /// Absolute path in the sandbox, e.g. /home/sandbox/out.txt.
    pub path: String,
}

/// How `write_file`'s content is given.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    /// The content is the file's text.
    #[default]
    #[serde(alias = "utf8", alias = "text")]
    Utf8,
    /// The content is the file's bytes in base64.
    Base64,
}

/// Arguments of `write_file`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct WriteFileArgs {
    /// Id returned by create_sandbox.
    pub sandbox_id: String,
    /// Absolute path in the sandbox, e.g. /home/sandbox/data.csv.
    pub path: String,
    /// The file's content: text, or base64 when encoding is "base64".
    pub content: String,
    /// "utf-8" (default) or "base64".
    #[serde(default)]
    pub encoding: Encoding,
}

/// Arguments of `list_files`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListFilesArgs {
    /// Id returned by create_sandbox.
    pub sandbox_id: String,
    /// Absolute path of a directory (default: /home/sandbox).
    #[serde(default)]
    pub path: Option<String>,
    /// Levels to descend, 1 to 8 (default: 1).
    #[serde(default)]
    pub depth: Option<u32>,
}

/// `read_file`'s answer.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileContent {
    pub path: String,
    pub size: u64,
    /// "utf-8" or "base64".
    pub encoding: String,
    pub content: String,
}

/// The MCP server: the tools over one [`SandboxOps`].
#[derive(Clone)]
pub struct SandboxTools {
    ops: Arc<dyn SandboxOps>,
    tool_router: ToolRouter<Self>,
}

impl std::fmt::Debug for SandboxTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxTools").finish_non_exhaustive()
    }
}

/// A successful result: the JSON as text and as structured content.
fn success<T: Serialize>(value: &T) -> Result<CallToolResult, ErrorData> {
    let value = serde_json::to_value(value)
        .map_err(|e| ErrorData::internal_error(format!("cannot encode the result: {e}"), None))?;
    Ok(CallToolResult::structured(value))
}

/// A tool error: the message as text, and `{"error": message}` (the API's
/// error body) as structured content.
pub fn tool_error(error: &OpsError) -> CallToolResult {
    let message = error.to_string();
    let mut result = CallToolResult::error(vec![ContentBlock::text(message.clone())]);
    result.structured_content = Some(json!({ "error": message }));
    result
}

fn answer<T: Serialize>(outcome: Result<T, OpsError>) -> Result<CallToolResult, ErrorData> {
    match outcome {
        Ok(value) => success(&value),
        Err(e) => Ok(tool_error(&e)),
    }
}

/// The file's text when it is UTF-8, else its base64.
pub fn file_content(path: String, bytes: Vec<u8>) -> FileContent {
    let size = bytes.len() as u64;
    match String::from_utf8(bytes) {
        Ok(text) => FileContent {
            path,
            size,
            encoding: "utf-8".into(),
            content: text,
        },
        Err(e) => FileContent {
            path,
            size,
            encoding: "base64".into(),
            content: base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
        },
    }
}

fn decode(content: String, encoding: Encoding) -> Result<Vec<u8>, OpsError> {
    match encoding {
        Encoding::Utf8 => Ok(content.into_bytes()),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(content.trim())
            .map_err(|e| OpsError::Api(format!("content is not valid base64: {e}"))),
    }
}

/// Creates a sandbox, runs `request` in it and deletes it, whatever the run
/// did. A delete that fails is logged: the sandbox then goes at its idle
/// timeout.
async fn run_once(
    ops: &dyn SandboxOps,
    language_pack: Option<String>,
    request: ExecRequest,
) -> Result<ExecResponse, OpsError> {
    let id = ops.create(language_pack).await?.id;
    let outcome = ops.exec(&id, request).await;
    if let Err(e) = ops.delete(&id).await {
        tracing::warn!(sandbox = %id, error = %e, "run_code could not delete its sandbox");
    }
    outcome
}

#[tool_router]
impl SandboxTools {
    pub fn new(ops: Arc<dyn SandboxOps>) -> Self {
        SandboxTools {
            ops,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = CREATE_SANDBOX)]
    async fn create_sandbox(
        &self,
        Parameters(args): Parameters<CreateSandboxArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        answer(self.ops.create(args.language_pack).await)
    }

    #[tool(description = EXEC_CODE)]
    async fn exec_code(
        &self,
        Parameters(args): Parameters<ExecCodeArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let request = ExecRequest {
            code: args.code,
            stdin: args.stdin,
            timeout_ms: args.timeout_ms,
            user: None,
        };
        answer(self.ops.exec(&args.sandbox_id, request).await)
    }

    #[tool(description = DELETE_SANDBOX)]
    async fn delete_sandbox(
        &self,
        Parameters(args): Parameters<DeleteSandboxArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let outcome = self.ops.delete(&args.sandbox_id).await;
        answer(outcome.map(|()| json!({ "id": args.sandbox_id, "deleted": true })))
    }

    #[tool(description = RUN_CODE)]
    async fn run_code(
        &self,
        Parameters(args): Parameters<RunCodeArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let request = ExecRequest {
            code: args.code,
            stdin: args.stdin,
            timeout_ms: args.timeout_ms,
            user: None,
        };
        // A task of its own, so that a client that goes away mid-run does
        // not cancel the delete.
        let ops = self.ops.clone();
        let run = tokio::spawn(async move { run_once(&*ops, args.language_pack, request).await });
        match run.await {
            Ok(outcome) => answer(outcome),
            Err(e) => Err(ErrorData::internal_error(
                format!("run_code failed: {e}"),
                None,
            )),
        }
    }

    #[tool(description = READ_FILE)]
    async fn read_file(
        &self,
        Parameters(args): Parameters<ReadFileArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let outcome = self
            .ops
            .read_file(&args.sandbox_id, &args.path, READ_FILE_LIMIT)
            .await;
        answer(outcome.map(|file| file_content(file.path, file.bytes)))
    }

    #[tool(description = WRITE_FILE)]
    async fn write_file(
        &self,
        Parameters(args): Parameters<WriteFileArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let bytes = match decode(args.content, args.encoding) {
            Ok(bytes) => bytes,
            Err(e) => return Ok(tool_error(&e)),
        };
        answer(
            self.ops
                .write_file(&args.sandbox_id, &args.path, bytes)
                .await,
        )
    }

    #[tool(description = LIST_FILES)]
    async fn list_files(
        &self,
        Parameters(args): Parameters<ListFilesArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let path = args.path.as_deref().unwrap_or(DEFAULT_LIST_PATH);
        answer(
            self.ops
                .list_files(&args.sandbox_id, path, args.depth)
                .await,
        )
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for SandboxTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("emberd", env!("CARGO_PKG_VERSION"))
                    .with_title("emberd sandboxes"),
            )
            .with_instructions(INSTRUCTIONS)
    }
}
