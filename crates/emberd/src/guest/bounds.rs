//! How long the daemon waits for each call to the guest agent.
//!
//! A guest may stop answering at any moment (its agent stopped or replaced,
//! the VM paused or wedged): no call to it may wait without a bound, and
//! every call also ends when the daemon shuts down. The `Hello` handshake
//! has no bound of its own: it waits for the guest to boot, under the
//! caller's boot timeout. The rest are here; the reasons are in
//! `docs/design-notes.md`.

use std::time::Duration;

use emberd_proto::boundary::{DEFAULT_EXEC_DRAIN_LIMIT_MS, MAX_EXEC_DRAIN_LIMIT_MS};

/// `SetIdentity`: the agent sets the clock, seeds entropy, writes a
/// hostname. Milliseconds on an idle guest; seconds under TCG and load.
pub const IDENTITY_BOUND: Duration = Duration::from_secs(5);

/// `Health`: the agent answers from memory.
pub const HEALTH_BOUND: Duration = Duration::from_secs(2);

/// `Quiesce`: the agent syncs the filesystems before a snapshot.
pub const QUIESCE_BOUND: Duration = Duration::from_secs(10);

/// Beyond an exec's timeout and drain limit: time for the agent to kill
/// the process group, reap it, and send the answer through a loaded VMM.
pub const EXEC_KILL_REAP_MARGIN: Duration = Duration::from_secs(5);

/// The drain limit an exec asks the agent for.
pub const EXEC_DRAIN_LIMIT: Duration = Duration::from_millis(DEFAULT_EXEC_DRAIN_LIMIT_MS);

const _: () = assert!(DEFAULT_EXEC_DRAIN_LIMIT_MS <= MAX_EXEC_DRAIN_LIMIT_MS);

/// How long the daemon waits for an exec's answer: its timeout, then the
/// agent's drain, then the kill-and-reap margin.
pub fn exec_answer_bound(timeout: Duration, drain_limit: Duration) -> Duration {
    timeout
        .saturating_add(drain_limit)
        .saturating_add(EXEC_KILL_REAP_MARGIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exec_answer_outlasts_the_agents_drain() {
        let timeout = Duration::from_secs(1);
        let bound = exec_answer_bound(timeout, EXEC_DRAIN_LIMIT);
        // The agent may answer as late as timeout + drain limit: the daemon
        // must still be listening then, with room for the kill and reap.
        assert!(bound >= timeout + EXEC_DRAIN_LIMIT + EXEC_KILL_REAP_MARGIN);
        assert!(EXEC_KILL_REAP_MARGIN >= Duration::from_secs(1));
    }
}
