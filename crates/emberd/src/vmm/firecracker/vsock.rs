//! Firecracker's hybrid vsock, host side: dial `v.sock`, send
//! `CONNECT <port>\n` (upper case, as Firecracker documents it), read
//! `OK <host port>\n`. Firecracker holds the connection until the guest
//! answers and drops it after 2 s without one; a dropped or refused dial is
//! [`VmmError::AgentConnect`], which callers retry within their bound.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::vmm::VmmError;

/// The longest `OK <port>\n` acknowledgement accepted.
const MAX_ACK: usize = 64;

/// A stream to guest port `port` through the hybrid-vsock socket `socket`,
/// its acknowledgement read within `bound`.
pub async fn dial(socket: &Path, port: u32, bound: Duration) -> Result<UnixStream, VmmError> {
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(VmmError::AgentConnect)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(VmmError::AgentConnect)?;
    let ack = tokio::time::timeout(bound, read_ack(&mut stream))
        .await
        .map_err(|_| VmmError::AgentConnect(std::io::Error::other("no answer to CONNECT")))?
        .map_err(VmmError::AgentConnect)?;
    if !ack.starts_with("OK ") {
        return Err(VmmError::AgentConnect(std::io::Error::other(format!(
            "vsock refused CONNECT: {ack:?}"
        ))));
    }
    Ok(stream)
}

/// Reads the `OK <port>\n` line byte by byte, so that no agent data that
/// follows it is consumed.
async fn read_ack(stream: &mut UnixStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    loop {
        let byte = stream.read_u8().await?;
        if byte == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(byte);
        if line.len() > MAX_ACK {
            return Err(std::io::Error::other("vsock acknowledgement too long"));
        }
    }
}
