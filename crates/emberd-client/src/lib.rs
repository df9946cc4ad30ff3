//! Rust client of the emberd HTTP API.
