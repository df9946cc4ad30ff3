//! Which packs' templates are no longer restored, for the daemon's
//! lifetime: a restore that fails on an intact template (the VMM refuses
//! it: another CPU, another host kernel, a VMM release with broken
//! restores) would fail the same way every time, so the pack cold-boots
//! from then on and its template is neither restored nor rebuilt. A
//! restore that times out may be the host's load, not the template: only
//! [`TIMEOUTS_BEFORE_GIVING_UP`] of them in a row give up. A corrupt
//! template is no reason to give up (it is rebuilt); that is the store's
//! call, not this module's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// Restores of one pack timing out in a row before its restores are given up.
pub(in crate::sandbox) const TIMEOUTS_BEFORE_GIVING_UP: u32 = 3;

/// The packs whose restores were given up, and the timeouts in a row of the others.
#[derive(Debug, Default)]
pub(super) struct GiveUp {
    state: Mutex<HashMap<String, PackRestores>>,
    /// How many packs were given up since the daemon started (a metric).
    given_up: AtomicU64,
}

#[derive(Debug, Default)]
struct PackRestores {
    timeouts_in_a_row: u32,
    given_up: bool,
}

impl GiveUp {
    /// True once the restores of `pack` were given up.
    pub fn is_given_up(&self, pack: &str) -> bool {
        self.state.lock().get(pack).is_some_and(|p| p.given_up)
    }

    /// A restore of `pack` worked: its timeouts start counting afresh.
    pub fn succeeded(&self, pack: &str) {
        if let Some(p) = self.state.lock().get_mut(pack) {
            p.timeouts_in_a_row = 0;
        }
    }

    /// A restore of `pack` timed out; true when that gave its restores up.
    pub fn timed_out(&self, pack: &str) -> bool {
        let mut state = self.state.lock();
        let p = state.entry(pack.to_owned()).or_default();
        p.timeouts_in_a_row += 1;
        p.timeouts_in_a_row >= TIMEOUTS_BEFORE_GIVING_UP && self.mark(p)
    }

    /// A restore of `pack` failed on an intact template; true when that
    /// gave its restores up (false when they already were).
    pub fn failed(&self, pack: &str) -> bool {
        let mut state = self.state.lock();
        self.mark(state.entry(pack.to_owned()).or_default())
    }

    fn mark(&self, p: &mut PackRestores) -> bool {
        if p.given_up {
            return false;
        }
        p.given_up = true;
        self.given_up.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// How many packs' restores were given up since the daemon started.
    pub fn count(&self) -> u64 {
        self.given_up.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failure_on_an_intact_template_gives_the_pack_up_for_good() {
        let give_up = GiveUp::default();
        assert!(!give_up.is_given_up("python"));
        assert!(give_up.failed("python"));
        assert!(give_up.is_given_up("python"));
        assert!(!give_up.is_given_up("shell"), "only that pack");
        assert!(!give_up.failed("python"), "counted once");
        give_up.succeeded("python");
        assert!(give_up.is_given_up("python"), "for the daemon's lifetime");
        assert_eq!(give_up.count(), 1);
    }

    #[test]
    fn only_timeouts_in_a_row_give_a_pack_up() {
        let give_up = GiveUp::default();
        for _ in 1..TIMEOUTS_BEFORE_GIVING_UP {
            assert!(!give_up.timed_out("python"));
        }
        give_up.succeeded("python");
        for _ in 1..TIMEOUTS_BEFORE_GIVING_UP {
            assert!(!give_up.timed_out("python"));
        }
        assert!(!give_up.is_given_up("python"));
        assert!(give_up.timed_out("python"));
        assert!(give_up.is_given_up("python"));
        assert_eq!(give_up.count(), 1);
    }
}
