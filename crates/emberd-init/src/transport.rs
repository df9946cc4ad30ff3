//! Where the agent listens: a Unix socket (host mode), vsock port
//! [`AGENT_VSOCK_PORT`] (Firecracker) and the virtio-serial port named
//! [`AGENT_SERIAL_PORT`] (QEMU).
//!
//! Every connection carries one gRPC session (`emberd_proto::serve_over`).
//! Sockets accept any number of sessions. The virtio-serial port is one
//! pipe: a session ends when the host hangs up, and the agent then waits
//! until a host is connected again before serving the next one, which is
//! what makes a snapshot taken between sessions safe to restore.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use emberd_proto::boundary::{AGENT_SERIAL_PORT, AGENT_VSOCK_PORT, MAX_MESSAGE_BYTES};
use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixListener;

use crate::agent::AgentService;

/// Builds the gRPC routes of one agent.
pub fn routes(
    agent: &Arc<AgentService>,
    files: &crate::files::FilesService,
) -> tonic::service::Routes {
    use emberd_proto::v1::agent_server::AgentServer;
    use emberd_proto::v1::files_server::FilesServer;
    tonic::service::Routes::new(
        AgentServer::from_arc(agent.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
    .add_service(
        FilesServer::new(files.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
}

/// Registers an owned descriptor with the reactor.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` keeps its descriptor open and unchanged until the
    // AsyncFd, which owns it, is dropped.
    unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)
}

/// A non-blocking file descriptor as an async byte stream.
pub struct FdStream {
    fd: AsyncFd<OwnedFd>,
}

impl FdStream {
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(FdStream { fd: register(fd)? })
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.as_raw_fd(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Serves sessions on a Unix socket at `path` forever.
pub async fn serve_unix(
    path: &Path,
    agent: Arc<AgentService>,
    routes: tonic::service::Routes,
) -> io::Result<()> {
    // Listen on a temporary name, then rename: the socket appears only once
    // it accepts connections.
    let staging = path.with_extension("binding");
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging)?;
    std::fs::rename(&staging, path)?;
    eprintln!("emberd-init: listening on {}", path.display());
    loop {
        let (stream, _) = listener.accept().await?;
        agent.new_session();
        let routes = routes.clone();
        tokio::spawn(async move {
            let _ = emberd_proto::serve_over(stream, routes).await;
        });
    }
}

/// Serves sessions on vsock port [`AGENT_VSOCK_PORT`] forever.
pub async fn serve_vsock(
    agent: Arc<AgentService>,
    routes: tonic::service::Routes,
) -> io::Result<()> {
    let listener = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(
        listener.as_raw_fd(),
        &VsockAddr::new(libc::VMADDR_CID_ANY, AGENT_VSOCK_PORT),
    )?;
    listen(&listener, Backlog::new(16)?)?;
    let listener = register(listener)?;
    eprintln!("emberd-init: listening on vsock port {AGENT_VSOCK_PORT}");
    loop {
        let mut guard = listener.readable().await?;
        let accepted = guard.try_io(|fd| {
            accept4(
                fd.as_raw_fd(),
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            )
            .map_err(io::Error::from)
        });
        let raw = match accepted {
            Ok(Ok(raw)) => raw,
            Ok(Err(e)) => {
                eprintln!("emberd-init: vsock accept failed: {e}");
                continue;
            }
            Err(_would_block) => continue,
        };
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        let stream = FdStream::new(fd)?;
        agent.new_session();
        let routes = routes.clone();
        tokio::spawn(async move {
            let _ = emberd_proto::serve_over(stream, routes).await;
        });
    }
}

/// The device node of the virtio-serial port named [`AGENT_SERIAL_PORT`], if any.
pub fn find_serial_port() -> Option<PathBuf> {
    let entries = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    for entry in entries.flatten() {
        let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == AGENT_SERIAL_PORT {
            return Some(Path::new("/dev").join(entry.file_name()));
        }
    }
    None
}

/// Serves one session at a time on the virtio-serial port at `device`, forever.
pub async fn serve_serial(
    device: PathBuf,
    agent: Arc<AgentService>,
    routes: tonic::service::Routes,
) -> io::Result<()> {
    eprintln!(
        "emberd-init: serving on {} ({AGENT_SERIAL_PORT})",
        device.display()
    );
    loop {
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&device)?;
        let fd = OwnedFd::from(file);
        wait_for_host(&fd).await;
        agent.new_session();
        let stream = FdStream::new(fd)?;
        if let Err(e) = emberd_proto::serve_over(stream, routes.clone()).await {
            eprintln!("emberd-init: session ended: {e}");
        }
    }
}

/// Waits until the host end of a virtio-serial port is connected: while it
/// is not, the port reports POLLHUP.
async fn wait_for_host(fd: &OwnedFd) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        let hung_up = match poll(&mut fds, PollTimeout::ZERO) {
            Ok(_) => fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLHUP)),
            Err(_) => true,
        };
        if !hung_up {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
