//! Where host and agent meet: the facts both sides must agree on to find
//! each other and talk. The daemon, the agent and the fake Firecracker take
//! them from here and nowhere else; the protocol generation, which says
//! whether they can talk at all, is [`crate::PROTOCOL_GENERATION`].

/// The vsock port the agent listens on (Firecracker's hybrid vsock `CONNECT` names it).
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The name of the virtio-serial port the agent serves on (QEMU).
pub const AGENT_SERIAL_PORT: &str = "org.emberd.agent";

/// The largest gRPC message either side sends or accepts.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// How long, by default, the agent keeps draining an exec's output after
/// its process group ended or was killed (children that escaped the group
/// may hold the pipes open forever). The host sends it in
/// `ExecStart.drain_limit_ms` and waits for the answer at least the exec's
/// timeout plus this plus its own kill-and-reap margin.
pub const DEFAULT_EXEC_DRAIN_LIMIT_MS: u64 = 10_000;

/// The longest drain limit the host asks for (and the agent accepts).
pub const MAX_EXEC_DRAIN_LIMIT_MS: u64 = 60_000;

/// The unprivileged user guest code runs as unless an exec asks for root.
pub const SANDBOX_USER: &str = "sandbox";

/// The sandbox user's uid in the guest.
pub const SANDBOX_UID: u32 = 1000;

/// The sandbox user's primary (and only) group id in the guest.
pub const SANDBOX_GID: u32 = 1000;

/// The sandbox user's home: its default working directory.
pub const SANDBOX_HOME: &str = "/home/sandbox";

/// The name an exec gives to run as root instead.
pub const ROOT_USER: &str = "root";

/// The largest terminal side (rows or columns) either end accepts for a PTY.
pub const MAX_PTY_SIDE: u32 = 1000;

/// The deepest directory listing `ListDir` descends.
pub const MAX_LIST_DEPTH: u32 = 8;

/// The most entries one `ListDir` answer carries.
pub const MAX_LIST_ENTRIES: usize = 10_000;

/// The longest path either end accepts, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;

/// The most stdin a host sends inside `ExecStart.stdin`; more goes in
/// `stdin` messages.
pub const MAX_INLINE_STDIN_BYTES: usize = 64 * 1024;

/// The most output per stream a `batch_output` exec holds back for its
/// `exit` message; beyond it, output is sent as it comes.
pub const MAX_BATCH_HELD_BYTES: usize = 64 * 1024;

/// Capabilities an agent lists in `HelloResponse.capabilities` for the
/// optional parts of the protocol.
pub mod capability {
    /// `ExecStart.pty` and `ExecInput.resize`.
    pub const PTY: &str = "pty";
    /// `Files.WriteTar` and `Files.ReadTar`.
    pub const TAR: &str = "tar";
    /// `WriteFileStart.owner`, `MakeDirRequest.owner`, `PathRequest.depth`.
    pub const FILES_OWNER: &str = "files-owner";
    /// `ExecStart.stdin`, `.close_stdin` and `.batch_output`, and the
    /// output, pid and warm flag an `ExecExit` carries.
    pub const EXEC_BATCH: &str = "exec-batch";
}
