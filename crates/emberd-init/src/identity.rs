//! Applying a sandbox identity in the guest: clock, entropy, hostname (and
//! the `/etc/hosts` that names it).
//!
//! Clones restored from one snapshot share their RNG state; the host's seed
//! is mixed into the kernel's input pool with credit (`RNDADDENTROPY`) and
//! the CRNG is then reseeded from it (`RNDRESEEDCRNG`), so every clone draws
//! different random numbers from then on.

use std::fs::File;
use std::os::fd::AsRawFd;

use emberd_proto::v1::Identity;

// The request type is `c_ulong` on glibc and `c_int` on musl: `libc::Ioctl`.
/// `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::Ioctl = 0x4008_5203_u32 as libc::Ioctl;
/// `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::Ioctl = 0x5207;

/// Errors applying an identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot set the clock")]
    Clock(#[source] nix::Error),
    #[error("cannot seed the kernel RNG")]
    Entropy(#[source] std::io::Error),
    #[error("cannot set the hostname")]
    Hostname(#[source] nix::Error),
    #[error("cannot write /etc/hosts")]
    Hosts(#[source] std::io::Error),
}

pub fn apply(identity: &Identity) -> Result<(), IdentityError> {
    if identity.unix_time_ns > 0 {
        let ts = nix::sys::time::TimeSpec::new(
            identity.unix_time_ns / 1_000_000_000,
            identity.unix_time_ns % 1_000_000_000,
        );
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
            .map_err(IdentityError::Clock)?;
    }
    if !identity.entropy_seed.is_empty() {
        seed_rng(&identity.entropy_seed).map_err(IdentityError::Entropy)?;
    }
    if !identity.hostname.is_empty() {
        set_hostname(&identity.hostname)?;
    }
    Ok(())
}

/// Sets the hostname and makes `/etc/hosts` name it. Without that line a
/// lookup of the guest's own name (Python's `socket.getfqdn()`, which
/// `http.server` calls at start) goes to DNS, which a sandbox without a
/// network waits on until it times out.
pub fn set_hostname(name: &str) -> Result<(), IdentityError> {
    nix::unistd::sethostname(name).map_err(IdentityError::Hostname)?;
    std::fs::write("/etc/hosts", hosts_file(name)).map_err(IdentityError::Hosts)
}

fn hosts_file(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         127.0.1.1\t{hostname}\n"
    )
}

fn seed_rng(seed: &[u8]) -> std::io::Result<()> {
    let urandom = File::options().write(true).open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let words = seed.len().div_ceil(4);
    let mut request = vec![0u32; 2 + words];
    let bits = i32::try_from(seed.len() * 8).unwrap_or(i32::MAX);
    request[0] = bits as u32;
    request[1] = seed.len() as u32;
    // SAFETY: the destination holds `words * 4 >= seed.len()` bytes past the
    // two header words, and u32 has no invalid bit patterns.
    unsafe {
        std::ptr::copy_nonoverlapping(
            seed.as_ptr(),
            request[2..].as_mut_ptr().cast::<u8>(),
            seed.len(),
        );
    }
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buf_size bytes
    // follow the header; `request` is laid out exactly so and outlives the call.
    let rc = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY, request.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let rc = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::hosts_file;

    #[test]
    fn the_hosts_file_names_localhost_and_the_sandbox() {
        let hosts = hosts_file("sb_0123");
        let lines: Vec<&str> = hosts.lines().collect();
        assert_eq!(
            lines,
            [
                "127.0.0.1\tlocalhost",
                "::1\tlocalhost ip6-localhost ip6-loopback",
                "127.0.1.1\tsb_0123"
            ]
        );
    }
}
