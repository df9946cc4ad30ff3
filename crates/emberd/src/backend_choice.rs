//! Which VM backend the daemon runs: the one rule `serve` follows and
//! `doctor` reports.
//!
//! Pure policy: the caller probes the host (KVM, the Firecracker binary) and
//! passes in what it found. Nothing here probes, starts a process or knows
//! about command-line parsing.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::vmm::kvm::KvmStatus;

/// The backend the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// Firecracker where it is installed and hardware KVM works, else QEMU.
    Auto,
    Qemu,
    Firecracker,
}

impl BackendChoice {
    pub const ALL: [BackendChoice; 3] = [
        BackendChoice::Auto,
        BackendChoice::Qemu,
        BackendChoice::Firecracker,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Qemu => "qemu",
            BackendChoice::Firecracker => "firecracker",
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a [`BackendChoice`].
#[derive(Debug, thiserror::Error)]
#[error("unknown backend {0:?}: expected auto, qemu or firecracker")]
pub struct UnknownBackend(String);

impl FromStr for BackendChoice {
    type Err = UnknownBackend;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        BackendChoice::ALL
            .into_iter()
            .find(|choice| choice.as_str() == name)
            .ok_or_else(|| UnknownBackend(name.to_owned()))
    }
}

/// A VM backend the daemon can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Qemu,
    Firecracker,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Qemu => "qemu",
            Backend::Firecracker => "firecracker",
        })
    }
}

/// Why [`choose_backend`] picked its backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Named with `--backend`.
    Requested(Backend),
    /// `auto`: Firecracker is installed and this hardware KVM works.
    FirecrackerUsable(KvmStatus),
    /// `auto`: no hardware KVM, so no Firecracker.
    NoHardwareKvm(KvmStatus),
    /// `auto`: hardware KVM works, but no usable Firecracker was found.
    NoFirecracker,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Requested(backend) => write!(f, "asked for with --backend {backend}"),
            Reason::FirecrackerUsable(kvm) => {
                write!(f, "Firecracker is installed, with {}", kvm.explain())
            }
            Reason::NoHardwareKvm(kvm) => {
                write!(f, "no hardware KVM for Firecracker: {}", kvm.explain())
            }
            Reason::NoFirecracker => f.write_str("Firecracker is not usable"),
        }
    }
}

/// Why the chosen backend cannot start VMs on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Obstacle {
    /// Firecracker needs hardware KVM and this host has none.
    NoHardwareKvm(KvmStatus),
    /// No usable Firecracker binary was found.
    NoFirecracker,
}

impl fmt::Display for Obstacle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Obstacle::NoHardwareKvm(kvm) => {
                write!(f, "Firecracker needs hardware KVM: {}", kvm.explain())
            }
            Obstacle::NoFirecracker => f.write_str("no usable Firecracker was found"),
        }
    }
}

/// The backend to run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendDecision {
    pub requested: BackendChoice,
    pub backend: Backend,
    pub reason: Reason,
    /// Set when the backend was named explicitly but cannot start VMs here;
    /// `auto` never picks a backend it knows cannot.
    pub obstacle: Option<Obstacle>,
}

/// "auto → qemu", or just "qemu" when it was named.
impl fmt::Display for BackendDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.requested {
            BackendChoice::Auto => write!(f, "auto → {}", self.backend),
            _ => write!(f, "{}", self.backend),
        }
    }
}

/// The rule: a named backend is used as named; `auto` takes Firecracker
/// where a usable Firecracker was found and hardware KVM works, else QEMU.
///
/// `firecracker_found` says whether a Firecracker binary recent enough was
/// found; `kvm` is what the host offers.
pub fn choose_backend(
    requested: BackendChoice,
    firecracker_found: bool,
    kvm: &KvmStatus,
) -> BackendDecision {
    let decision = |backend, reason, obstacle| BackendDecision {
        requested,
        backend,
        reason,
        obstacle,
    };
    match requested {
        BackendChoice::Qemu => decision(Backend::Qemu, Reason::Requested(Backend::Qemu), None),
        BackendChoice::Firecracker => {
            let obstacle = if !kvm.is_hardware() {
                Some(Obstacle::NoHardwareKvm(kvm.clone()))
            } else if !firecracker_found {
                Some(Obstacle::NoFirecracker)
            } else {
                None
            };
            decision(
                Backend::Firecracker,
                Reason::Requested(Backend::Firecracker),
                obstacle,
            )
        }
        BackendChoice::Auto if !kvm.is_hardware() => {
            decision(Backend::Qemu, Reason::NoHardwareKvm(kvm.clone()), None)
        }
        BackendChoice::Auto if !firecracker_found => {
            decision(Backend::Qemu, Reason::NoFirecracker, None)
        }
        BackendChoice::Auto => decision(
            Backend::Firecracker,
            Reason::FirecrackerUsable(kvm.clone()),
            None,
        ),
    }
}

/// Why Firecracker runs without its jailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unjailed {
    /// `--no-jailer`.
    OptedOut,
    /// No `jailer` binary was found.
    NoJailer,
    /// The jailer must start as root (chroot, namespaces, uid switch).
    NotRoot,
}

impl fmt::Display for Unjailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unjailed::OptedOut => "--no-jailer was given",
            Unjailed::NoJailer => "no jailer binary was found",
            Unjailed::NotRoot => "the jailer needs root and the daemon is not root",
        })
    }
}

/// The jailer rule: Firecracker goes through its jailer whenever one is
/// found and the daemon can run it, unless the operator opted out.
pub fn choose_jailer(opted_out: bool, jailer_found: bool, root: bool) -> Result<(), Unjailed> {
    match (opted_out, jailer_found, root) {
        (true, _, _) => Err(Unjailed::OptedOut),
        (_, false, _) => Err(Unjailed::NoJailer),
        (_, _, false) => Err(Unjailed::NotRoot),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hardware() -> KvmStatus {
        KvmStatus::Hardware {
            module: "kvm_intel".into(),
        }
    }

    #[test]
    fn auto_takes_firecracker_only_with_the_binary_and_hardware_kvm() {
        let decision = choose_backend(BackendChoice::Auto, true, &hardware());
        assert_eq!(decision.backend, Backend::Firecracker);
        assert_eq!(decision.reason, Reason::FirecrackerUsable(hardware()));
        assert_eq!(decision.obstacle, None);
        assert_eq!(decision.to_string(), "auto → firecracker");

        let decision = choose_backend(BackendChoice::Auto, false, &hardware());
        assert_eq!(decision.backend, Backend::Qemu);
        assert_eq!(decision.reason, Reason::NoFirecracker);
        assert_eq!(decision.obstacle, None);
    }

    #[test]
    fn auto_takes_qemu_on_a_paravirtual_kvm_and_says_why() {
        let decision = choose_backend(BackendChoice::Auto, true, &KvmStatus::Paravirtual);
        assert_eq!(decision.backend, Backend::Qemu);
        assert_eq!(
            decision.reason,
            Reason::NoHardwareKvm(KvmStatus::Paravirtual)
        );
        assert_eq!(decision.obstacle, None);
        assert_eq!(decision.to_string(), "auto → qemu");
        let why = decision.reason.to_string();
        assert!(why.starts_with("no hardware KVM for Firecracker"), "{why}");
        assert!(why.contains("kvm_pvm"), "{why}");
    }

    #[test]
    fn a_named_backend_is_kept_and_its_obstacle_reported() {
        for kvm in [hardware(), KvmStatus::Missing] {
            let decision = choose_backend(BackendChoice::Qemu, false, &kvm);
            assert_eq!(decision.backend, Backend::Qemu);
            assert_eq!(decision.reason, Reason::Requested(Backend::Qemu));
            assert_eq!(decision.obstacle, None);
            assert_eq!(decision.to_string(), "qemu");
        }
        let decision = choose_backend(BackendChoice::Firecracker, true, &KvmStatus::Paravirtual);
        assert_eq!(decision.backend, Backend::Firecracker);
        assert_eq!(
            decision.obstacle,
            Some(Obstacle::NoHardwareKvm(KvmStatus::Paravirtual))
        );
        let decision = choose_backend(BackendChoice::Firecracker, false, &hardware());
        assert_eq!(decision.backend, Backend::Firecracker);
        assert_eq!(decision.obstacle, Some(Obstacle::NoFirecracker));
        let decision = choose_backend(BackendChoice::Firecracker, true, &hardware());
        assert_eq!(decision.obstacle, None);
        assert_eq!(
            decision.reason.to_string(),
            "asked for with --backend firecracker"
        );
    }

    #[test]
    fn firecracker_is_jailed_by_default_when_the_jailer_can_run() {
        assert_eq!(choose_jailer(false, true, true), Ok(()));
        assert_eq!(choose_jailer(true, true, true), Err(Unjailed::OptedOut));
        assert_eq!(choose_jailer(false, false, true), Err(Unjailed::NoJailer));
        assert_eq!(choose_jailer(false, true, false), Err(Unjailed::NotRoot));
    }

    #[test]
    fn choices_parse_from_their_own_names() {
        for choice in BackendChoice::ALL {
            assert_eq!(choice.to_string().parse::<BackendChoice>().unwrap(), choice);
        }
        let err = "kvm".parse::<BackendChoice>().unwrap_err();
        assert!(err.to_string().contains("\"kvm\""), "{err}");
    }
}
