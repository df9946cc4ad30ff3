//! A real `emberd serve` process for tests and the benchmark.
//!
//! [`DaemonBuilder`] starts the daemon binary on a free port with its own
//! work dir, waits until it answers `GET /healthz`, and hands back a
//! [`Daemon`] that reads its log, accounts for its VM processes and, on
//! drop, stops it and kills whatever VM outlived it.
//!
//! This crate only spawns a binary and talks HTTP: it must never depend on
//! the `emberd` crate, so that it drives the daemon exactly as a user does.

mod daemon;
mod data_dir;
mod procs;

pub use daemon::{Daemon, DaemonBuilder, HarnessError};
pub use data_dir::share_images;
pub use procs::{is_alive, processes, processes_mentioning, Process};
