//! What a snapshot depends on beyond the VM's own inputs: the host's CPU
//! (vendor, model and flags, which KVM exposes to the guest) and the host
//! kernel's release. Firecracker requires both to match between snapshot
//! and restore (`docs/snapshotting/snapshot-support.md`), so they are part
//! of every template's key. Reads `/proc` only; never fails.

/// The host's CPU vendor, model and flags, and its kernel release, as one
/// string (empty parts when `/proc` does not say).
pub(in crate::sandbox) fn host_fingerprint() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    fingerprint(&cpuinfo, release.trim())
}

/// The fingerprint from the text of `/proc/cpuinfo` (its first processor)
/// and a kernel release.
fn fingerprint(cpuinfo: &str, release: &str) -> String {
    let first = cpuinfo.split("\n\n").next().unwrap_or_default();
    let field = |name: &str| {
        first
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim() == name)
            .map(|(_, value)| value.trim().to_owned())
            .unwrap_or_default()
    };
    [
        field("vendor_id"),
        field("cpu family"),
        field("model"),
        field("model name"),
        field("flags"),
        release.to_owned(),
    ]
    .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\nmodel name\t: Xeon\nflags\t\t: fpu vme avx512f\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\n";

    #[test]
    fn the_fingerprint_names_cpu_model_flags_and_kernel_release() {
        let a = fingerprint(CPU, "6.1.0-18-amd64");
        assert!(a.contains("Xeon") && a.contains("avx512f") && a.contains("6.1.0-18-amd64"));
        assert_ne!(a, fingerprint(CPU, "6.12.0-1-amd64"), "kernel release");
        assert_ne!(
            a,
            fingerprint(&CPU.replace(" avx512f", ""), "6.1.0-18-amd64"),
            "cpu flags"
        );
        assert_ne!(
            a,
            fingerprint(&CPU.replace("85", "106"), "6.1.0-18-amd64"),
            "cpu model"
        );
        assert!(!host_fingerprint().is_empty());
    }
}
