//! What Ctrl-Alt-Del does to this backend's guests. A running guest asked
//! to reboot ends Firecracker (`reboot=k`): its only clean exit, since
//! Firecracker sets no SIGTERM handler. A guest kernel without i8042/atkbd
//! ignores the request; the first stop learns which it is, and once a
//! guest ignored it every later stop goes straight to signals instead of
//! waiting the grace each time. Shared by a backend and its VMs.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

const UNKNOWN: u8 = 0;
const REBOOTS: u8 = 1;
const IGNORED: u8 = 2;

/// How long a running guest gets to reboot after Ctrl-Alt-Del before
/// signals follow.
pub const CTRL_ALT_DEL_GRACE: Duration = Duration::from_secs(1);

/// Whether guests reboot on Ctrl-Alt-Del, as learnt at the first stop.
#[derive(Debug, Clone, Default)]
pub struct CtrlAltDel(Arc<AtomicU8>);

impl CtrlAltDel {
    /// True once a guest ignored Ctrl-Alt-Del: stops skip it.
    pub fn skip(&self) -> bool {
        self.0.load(Ordering::Relaxed) == IGNORED
    }

    /// A guest `ended` within the grace after Ctrl-Alt-Del, or did not.
    /// The first stop decides: a busy guest later is no kernel change.
    pub fn learn(&self, ended: bool) {
        let learnt = if ended { REBOOTS } else { IGNORED };
        let first = self
            .0
            .compare_exchange(UNKNOWN, learnt, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if first && !ended {
            tracing::warn!(
                grace_ms = CTRL_ALT_DEL_GRACE.as_millis() as u64,
                "the guest ignored Ctrl-Alt-Del (its kernel lacks i8042/atkbd): Firecracker VMs are stopped by signal from now on"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_stop_decides() {
        let ignored = CtrlAltDel::default();
        assert!(!ignored.skip());
        ignored.learn(false);
        assert!(ignored.skip());
        ignored.learn(true);
        assert!(ignored.skip());
        let reboots = CtrlAltDel::default();
        reboots.learn(true);
        reboots.learn(false);
        assert!(!reboots.skip(), "one busy guest turned Ctrl-Alt-Del off");
    }
}
