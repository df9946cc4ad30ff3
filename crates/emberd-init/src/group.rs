//! How an exec's process group is signalled without ever signalling a pid
//! that may have been reaped and reused: only its reaper may do it, while the
//! leader is registered and unreaped. For the agent's own children that is
//! [`Reaper::signal_group`]; for a child of the Python fork server, the fork
//! server, asked over the exec's connection.

use nix::sys::signal::Signal;
use tokio::sync::mpsc;

use crate::reaper::Reaper;

/// Signals one exec's process group through whoever reaps its leader.
#[derive(Clone)]
pub enum Group {
    /// A child of the agent, leading its own group.
    Agent { reaper: Reaper, pid: i32 },
    /// A child of the fork server: the signal numbers go to it.
    ForkServer(mpsc::UnboundedSender<i32>),
}

impl Group {
    /// Sends `signal` to the group unless its leader is already gone.
    pub fn signal(&self, signal: Signal) {
        match self {
            Group::Agent { reaper, pid } => {
                reaper.signal_group(*pid, signal);
            }
            Group::ForkServer(requests) => {
                let _ = requests.send(signal as i32);
            }
        }
    }
}
