//! The pseudo-terminal of an exec started with `ExecStart.pty`.
//!
//! The agent keeps the master (non-blocking, close-on-exec) and the child
//! gets the slave as stdin, stdout and stderr, as the controlling terminal
//! of a session of its own ([`Pty::attach`]). Output comes back on the
//! master; the end of the last slave descriptor shows there as `EIO`, which
//! the reader takes as the end of output. Must never hand the master to a
//! child, nor leave the slave open in the agent once the child has started.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use emberd_proto::boundary::MAX_PTY_SIDE;
use emberd_proto::v1::PtySize;
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::stat::Mode;
use tokio::net::unix::pipe;

/// Rows and columns when the host asks for 0.
const DEFAULT_ROWS: u16 = 24;
const DEFAULT_COLS: u16 = 80;
/// What `close_stdin` writes: the terminal's end-of-file character (`^D`),
/// which ends the input of a program reading at the start of a line.
pub const EOF_CHAR: u8 = 0x04;

/// The terminal size the host asked for, each side within 1..=MAX_PTY_SIDE
/// (0 means the default 24x80 side).
pub fn window(size: &PtySize) -> libc::winsize {
    let side = |asked: u32, default: u16| {
        if asked == 0 {
            default
        } else {
            // MAX_PTY_SIDE fits u16 (checked below at compile time).
            asked.min(MAX_PTY_SIDE) as u16
        }
    };
    libc::winsize {
        ws_row: side(size.rows, DEFAULT_ROWS),
        ws_col: side(size.cols, DEFAULT_COLS),
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

const _: () = assert!(MAX_PTY_SIDE <= u16::MAX as u32);

/// A new terminal: the agent's master and the child's slave.
pub struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

/// The agent's ends of a started terminal.
pub struct Master {
    /// Reads the terminal's output.
    pub output: pipe::Receiver,
    /// Writes the terminal's input.
    pub input: pipe::Sender,
    /// For resizes.
    pub control: OwnedFd,
}

impl Pty {
    /// Opens a terminal of `size`.
    pub fn open(size: &PtySize) -> std::io::Result<Pty> {
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let name = ptsname_r(&master)?;
        // SAFETY: `into_raw_fd` gives up ownership of an open descriptor.
        let master = unsafe { OwnedFd::from_raw_fd(master.into_raw_fd()) };
        let slave = open(
            name.as_str(),
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        // SAFETY: `open` returned a new descriptor that nothing else owns.
        let slave = unsafe { OwnedFd::from_raw_fd(slave) };
        resize(&master, size)?;
        let flags = OFlag::from_bits_truncate(fcntl(master.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(
            master.as_raw_fd(),
            FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
        )?;
        Ok(Pty { master, slave })
    }

    /// Makes `command` run on the terminal: the slave as its stdio and, in
    /// the child, a new session with the slave as controlling terminal.
    /// Must come before any other `pre_exec` of the command (the user switch).
    pub fn attach(&self, command: &mut Command) -> std::io::Result<()> {
        command
            .stdin(Stdio::from(self.slave.try_clone()?))
            .stdout(Stdio::from(self.slave.try_clone()?))
            .stderr(Stdio::from(self.slave.try_clone()?));
        // SAFETY: setsid and ioctl are async-signal-safe; stdin is the slave
        // by the time pre_exec closures run.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// The master, once the child has started: the agent's slave is closed
    /// here, so that the child's end is the last one.
    pub fn into_master(self) -> std::io::Result<Master> {
        drop(self.slave);
        let input = self.master.try_clone()?;
        let control = self.master.try_clone()?;
        Ok(Master {
            output: pipe::Receiver::from_owned_fd_unchecked(self.master)?,
            input: pipe::Sender::from_owned_fd_unchecked(input)?,
            control,
        })
    }
}

/// Applies a new size; the kernel sends SIGWINCH to the terminal's
/// foreground process group.
pub fn resize(master: &impl AsRawFd, size: &PtySize) -> std::io::Result<()> {
    let window = window(size);
    let fd: RawFd = master.as_raw_fd();
    // SAFETY: TIOCSWINSZ reads one `winsize` that lives across the call.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &window) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_default_and_clamp() {
        let w = window(&PtySize { rows: 0, cols: 0 });
        assert_eq!((w.ws_row, w.ws_col), (24, 80));
        let w = window(&PtySize {
            rows: 50,
            cols: u32::MAX,
        });
        assert_eq!((w.ws_row, w.ws_col), (50, MAX_PTY_SIDE as u16));
    }
}
