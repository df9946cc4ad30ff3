//! The fake's "guest": the agent process and everything below it, stopped,
//! continued and killed as a whole, and the hybrid-vsock proxy in front of
//! the agent's socket.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use emberd_proto::boundary::AGENT_VSOCK_PORT;

/// Every process below this one. The fake is a child subreaper, so what
/// the agent's children leave behind stays below it too.
pub(crate) fn guest_processes() -> Vec<libc::pid_t> {
    let mut parents: Vec<(libc::pid_t, libc::pid_t)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<libc::pid_t>().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![std::process::id() as libc::pid_t];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    found.remove(0);
    found
}

pub(crate) fn signal_guest(signal: libc::c_int) {
    for pid in guest_processes() {
        // SAFETY: kill(2) takes plain integers; the pids are our descendants.
        unsafe { libc::kill(pid, signal) };
    }
}

/// SIGKILLs every descendant and reaps them, until none is left (bounded).
pub(crate) fn kill_guest() {
    for _ in 0..200 {
        if guest_processes().is_empty() {
            return;
        }
        signal_guest(libc::SIGKILL);
        // SAFETY: waitpid with WNOHANG and a null status pointer is allowed.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A guest that floods its console (the fake's stdout): `bytes` bytes of
/// lines, then `console flood done`, from a thread of its own.
pub(crate) fn flood_console(bytes: u64) {
    std::thread::spawn(move || {
        use std::io::Write;
        let line = [b"flood ".as_slice(), &[b'x'; 57], b"\n"].concat();
        let chunk = line.repeat(1024);
        let mut written = 0u64;
        while written < bytes {
            // A lock per chunk, so the fake's own messages still get out.
            if std::io::stdout().lock().write_all(&chunk).is_err() {
                return;
            }
            written += chunk.len() as u64;
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "console flood done");
        let _ = out.flush();
    });
}

/// How long Firecracker waits for the guest to answer a host-initiated
/// connection (`CONN_REQUEST_TIMEOUT_MS`) before dropping it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// `CONNECT <port>` as Firecracker's muxer reads it: the word in any case,
/// then the port.
fn parse_connect(line: &str) -> Option<u32> {
    let mut words = line.split_whitespace();
    let verb = words.next()?;
    let port = words.next()?.parse().ok()?;
    (verb.eq_ignore_ascii_case("connect") && words.next().is_none()).then_some(port)
}

/// Hybrid vsock: `CONNECT <port>\n` from the host, `OK <n>\n` back, then
/// bytes both ways. Any port is forwarded to the guest, where only the
/// agent's listens. Until the guest's vsock driver is up (here: until the
/// agent's socket exists) a connection waits; the guest answers within
/// [`CONNECT_TIMEOUT`] or the connection is dropped; a port nobody listens
/// on is reset at once.
/// The first `drop_after_ok` connections that get their `OK` are then
/// closed, as a guest end that goes away before the first byte would.
pub(crate) async fn vsock_proxy(
    listener: UnixListener,
    agent_socket: PathBuf,
    no_ack: bool,
    drop_after_ok: u32,
) {
    let mut next_port = 1_073_741_824u32;
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    loop {
        let Ok((mut host, _)) = listener.accept().await else {
            return;
        };
        next_port += 1;
        let host_port = next_port;
        let dropped = dropped.clone();
        let agent_socket = agent_socket.clone();
        tokio::spawn(async move {
            let mut line = Vec::new();
            loop {
                match host.read_u8().await {
                    Ok(b'\n') => break,
                    Ok(byte) if line.len() < 64 => line.push(byte),
                    _ => return,
                }
            }
            let Some(port) = parse_connect(&String::from_utf8_lossy(&line)) else {
                return;
            };
            if no_ack {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            let asked = tokio::time::Instant::now();
            let mut guest = loop {
                if agent_socket.exists() {
                    // The driver is up: a listener answers, else a reset.
                    if port != AGENT_VSOCK_PORT {
                        return;
                    }
                    match UnixStream::connect(&agent_socket).await {
                        Ok(guest) => break guest,
                        Err(_) => return,
                    }
                }
                if asked.elapsed() >= CONNECT_TIMEOUT {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            if host
                .write_all(format!("OK {host_port}\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            if dropped.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < drop_after_ok {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut host, &mut guest).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_is_read_in_any_case_with_any_port() {
        assert_eq!(parse_connect("CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect("connect 52"), Some(52));
        assert_eq!(parse_connect("Connect 7 "), Some(7));
        assert_eq!(parse_connect("CONNECT"), None);
        assert_eq!(parse_connect("CONNECT x"), None);
        assert_eq!(parse_connect("OPEN 1024"), None);
    }
}
