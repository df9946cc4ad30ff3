//! The accelerator QEMU runs guests with: the user's choice, the decision
//! from what the host offers, and the kernel arguments TCG guests need.
//! Probes nothing but the host's TSC frequency.

use super::super::kvm::KvmStatus;
use super::super::Accel;

/// Which accelerator to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM where hardware KVM works, TCG elsewhere.
    Auto,
    Kvm,
    Tcg,
}

impl AccelChoice {
    pub const ALL: [AccelChoice; 3] = [AccelChoice::Auto, AccelChoice::Kvm, AccelChoice::Tcg];

    pub fn as_str(self) -> &'static str {
        match self {
            AccelChoice::Auto => "auto",
            AccelChoice::Kvm => "kvm",
            AccelChoice::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for AccelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not an [`AccelChoice`].
#[derive(Debug, thiserror::Error)]
#[error("unknown accelerator {0:?}: expected auto, kvm or tcg")]
pub struct UnknownAccel(String);

impl std::str::FromStr for AccelChoice {
    type Err = UnknownAccel;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        AccelChoice::ALL
            .into_iter()
            .find(|choice| choice.as_str() == name)
            .ok_or_else(|| UnknownAccel(name.to_owned()))
    }
}

/// The accelerator in use and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelDecision {
    pub accel: Accel,
    pub reason: String,
}

impl AccelDecision {
    /// Decides from the user's choice and what the host offers.
    pub fn decide(choice: AccelChoice, kvm: &KvmStatus) -> Self {
        match (choice, kvm) {
            (AccelChoice::Tcg, _) => AccelDecision {
                accel: Accel::Tcg,
                reason: "asked for with --accel tcg".into(),
            },
            (AccelChoice::Kvm, _) => AccelDecision {
                accel: Accel::Kvm,
                reason: "asked for with --accel kvm".into(),
            },
            (AccelChoice::Auto, KvmStatus::Hardware { module }) => AccelDecision {
                accel: Accel::Kvm,
                reason: format!("hardware KVM ({module}) is usable"),
            },
            (AccelChoice::Auto, other) => AccelDecision {
                accel: Accel::Tcg,
                reason: format!("no usable hardware KVM: {}", other.explain()),
            },
        }
    }
}

/// Under TCG the guest's TSC is the host's, but calibrating it against the
/// emulated PIT fails when the host is busy, and the kernel then hangs in
/// early boot. Telling it the frequency skips the calibration; `tsc=reliable`
/// stops the watchdog from distrusting a TSC whose reference (timer ticks)
/// is the thing that lags.
pub(super) fn tcg_clock_args(tsc_khz: Option<u64>) -> Vec<String> {
    match tsc_khz {
        Some(khz) => vec![format!("tsc_early_khz={khz}"), "tsc=reliable".into()],
        None => Vec::new(),
    }
}

/// The host's TSC frequency: sysfs where the kernel exports it, else the
/// `cpu MHz` of /proc/cpuinfo.
pub(super) fn host_tsc_khz() -> Option<u64> {
    let sysfs = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz").ok();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok();
    tsc_khz_from(sysfs.as_deref(), cpuinfo.as_deref())
}

/// [`host_tsc_khz`] from the two files' contents, where they could be read.
fn tsc_khz_from(sysfs: Option<&str>, cpuinfo: Option<&str>) -> Option<u64> {
    if let Some(khz) = sysfs.and_then(|text| text.trim().parse().ok()) {
        return Some(khz);
    }
    let mhz: f64 = cpuinfo?
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_uses_tcg_on_paravirtual_kvm() {
        let decision = AccelDecision::decide(AccelChoice::Auto, &KvmStatus::Paravirtual);
        assert_eq!(decision.accel, Accel::Tcg);
        assert!(
            decision.reason.contains("no usable hardware KVM"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn auto_uses_kvm_on_hardware_kvm() {
        let kvm = KvmStatus::Hardware {
            module: "kvm_intel".into(),
        };
        assert_eq!(
            AccelDecision::decide(AccelChoice::Auto, &kvm).accel,
            Accel::Kvm
        );
        assert_eq!(
            AccelDecision::decide(AccelChoice::Tcg, &kvm).accel,
            Accel::Tcg
        );
    }

    #[test]
    fn tcg_guests_are_told_the_tsc_frequency() {
        assert_eq!(
            tcg_clock_args(Some(2_596_138)),
            ["tsc_early_khz=2596138", "tsc=reliable"]
        );
        assert!(tcg_clock_args(None).is_empty());
    }

    #[test]
    fn the_tsc_frequency_comes_from_sysfs_else_cpuinfo_else_nowhere() {
        let cpuinfo = "processor\t: 0\ncpu MHz\t\t: 2596.138\nflags\t\t: tsc\n";
        assert_eq!(
            tsc_khz_from(Some("2596000\n"), Some(cpuinfo)),
            Some(2_596_000)
        );
        // Hosts without sysfs's tsc_freq_khz (most VMs) fall back to cpuinfo.
        assert_eq!(tsc_khz_from(None, Some(cpuinfo)), Some(2_596_138));
        assert_eq!(
            tsc_khz_from(Some("garbage"), Some(cpuinfo)),
            Some(2_596_138)
        );
        // Hosts that expose neither: no frequency, so no clock arguments.
        assert_eq!(tsc_khz_from(None, Some("processor\t: 0\n")), None);
        assert_eq!(tsc_khz_from(None, Some("cpu MHz\t\t: 0.000\n")), None);
        assert_eq!(tsc_khz_from(None, None), None);
    }
}
