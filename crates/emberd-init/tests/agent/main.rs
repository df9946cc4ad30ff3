//! The agent as a host process on a Unix socket: exec, files and protocol
//! semantics without a VM, with the real `python3` and `node`.

mod batch;
mod exec;
mod file_kinds;
mod files;
mod interpreters;
mod node_spare;
mod protocol;
mod pty;
mod support;
mod tarball;
