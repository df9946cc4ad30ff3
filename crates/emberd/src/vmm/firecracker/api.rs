//! Firecracker's REST API over its Unix socket: one HTTP/1.1 request per
//! connection (hyper), JSON in, `fault_message` out on errors.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

use crate::vmm::VmmError;

/// The API socket of one Firecracker process.
#[derive(Debug, Clone)]
pub struct FirecrackerApi {
    socket: PathBuf,
}

impl FirecrackerApi {
    pub fn new(socket: &Path) -> Self {
        FirecrackerApi {
            socket: socket.to_owned(),
        }
    }

    /// Sends one request; a non-2xx answer becomes [`VmmError::Api`] with
    /// Firecracker's `fault_message`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, VmmError> {
        let request_name = format!("{method} {path}");
        let control = |e: &dyn std::fmt::Display| {
            VmmError::Control(std::io::Error::other(format!("{request_name}: {e}")))
        };
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(VmmError::Control)?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| control(&e))?;
        tokio::spawn(connection);
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("accept", "application/json")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| control(&e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| control(&e))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| control(&e))?
            .to_bytes();
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if status.is_success() {
            Ok(value)
        } else {
            let message = value
                .get("fault_message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("HTTP {status}: {value}"));
            Err(VmmError::Api {
                request: request_name,
                message,
            })
        }
    }
}
