//! Applying a sandbox identity in the guest: clock, entropy, hostname.
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
        nix::unistd::sethostname(&identity.hostname).map_err(IdentityError::Hostname)?;
    }
    Ok(())
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
