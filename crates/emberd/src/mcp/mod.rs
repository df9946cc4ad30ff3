//! MCP (Model Context Protocol) for agents: the same tools served two ways.
//!
//! - [`tools`]: the tools (`create_sandbox`, `exec_code`, `delete_sandbox`,
//!   `run_code`, `read_file`, `write_file`, `list_files`), their truthful
//!   descriptions and their results in the HTTP API's JSON shapes.
//! - [`ops`]: [`SandboxOps`], the operations the tools call, with two
//!   implementations: [`ops_client`] (a running daemon over HTTP, through
//!   `emberd-client`) and [`ops_manager`] (the daemon's Manager, in-process).
//! - [`stdio`]: `emberd mcp`, stdio to a daemon; [`http`]: the service the
//!   daemon mounts at `/mcp`.
//!
//! Holds no sandbox logic and no access rules: the Manager decides what a
//! sandbox does, the API's edge who may call `/mcp`. Imports of `api` are
//! limited to `api::wire`, the one conversion to the API's types.

pub mod http;
pub mod ops;
pub mod ops_client;
pub mod ops_manager;
pub mod stdio;
pub mod tools;

pub use ops::{FileBytes, OpsError, SandboxOps};
pub use tools::SandboxTools;
