//! emberd: a daemon that runs untrusted code in throw-away microVMs.
//!
//! - [`api`]: axum handlers; parse, call the manager, map errors.
//! - [`sandbox`]: the Manager; ids, lifecycle, pools, snapshots, limits.
//! - [`vmm`]: the VM backend trait and its QEMU and Firecracker backends.
//! - [`guest`]: the gRPC connection to the agent inside each sandbox.
//! - [`image`]: building and locating kernels, initramfs and packs.
//! - [`mcp`]: MCP tools for agents, on stdio (`emberd mcp`) and at `/mcp`.
//! - [`config`]: the settings, from flags, environment and file.
//! - [`backend_choice`]: which backend `serve` runs and `doctor` reports.

pub mod api;
pub mod backend_choice;
pub mod config;
pub mod doctor;
pub mod error_chain;
pub mod guest;
pub mod host_tools;
pub mod image;
pub mod logging;
pub mod mcp;
pub mod metrics;
pub mod sandbox;
pub mod serve;
pub mod vmm;
