//! Rust client of the emberd HTTP API (see `docs/api.md`).
//!
//! [`Client`] has one typed async method per route. Every failure is a
//! [`ClientError`]: an error answer from the daemon keeps its HTTP status and the
//! daemon's `error` message; a refused connection is told apart so that callers
//! can say "the daemon isn't running" instead of printing a transport error.
//!
//! Streams never sit whole in memory: exec output and process logs arrive
//! as Server-Sent Events ([`ExecStream`], [`OutputFollow`]), uploads are read
//! from any `AsyncRead` as they are sent ([`UploadBody`]), downloads are
//! written to any `AsyncWrite` as they arrive ([`Download`]), and a process's
//! terminal is a WebSocket ([`Attach`]). The bearer token goes with every
//! request, the WebSocket's included.

use std::time::Duration;

use emberd_api::{
    CreateSandboxRequest, CreateSandboxResponse, ExecRequest, ExecResponse, InfoResponse,
    SandboxInfo, SandboxList,
};
use reqwest::{Method, RequestBuilder, Url};
use serde::de::DeserializeOwned;

mod attach;
mod error;
mod exec;
mod files;
mod follow;
mod process;
mod sse;
mod timed;

pub use attach::{Attach, AttachEnd, AttachEvent, AttachReceiver, AttachSender};
pub use error::ClientError;
pub use exec::{ExecEvent, ExecStream};
pub use files::{Download, FileStat, Progress, PutOptions, UploadBody};
pub use follow::{OutputFollow, ProcessEvent, StreamKind};
pub use reqwest::StatusCode;
pub use sse::decode_output;
pub use timed::{server_time, Timed};

/// Address used when none is given.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:7777";

/// Extra time allowed over an exec's own `timeout_ms` before the client gives up,
/// so that the daemon's timeout answer (with partial output) arrives first.
pub(crate) const EXEC_TIMEOUT_GRACE: Duration = Duration::from_secs(30);

/// Parses a daemon address: a full `http://` URL, or `host:port` without a scheme.
pub fn parse_addr(addr: &str) -> Result<Url, ClientError> {
    let invalid = |reason: String| ClientError::InvalidAddress {
        addr: addr.to_string(),
        reason,
    };
    let trimmed = addr.trim();
    if trimmed.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    };
    let mut url = Url::parse(&with_scheme).map_err(|e| invalid(e.to_string()))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(invalid(format!(
            "scheme {:?} is not http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none() {
        return Err(invalid("it has no host".into()));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// Async client of one emberd daemon.
#[derive(Clone)]
pub struct Client {
    base: Url,
    http: reqwest::Client,
    request_timeout: Option<Duration>,
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("request_timeout", &self.request_timeout)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Client {
    /// A client of the daemon at `addr` (see [`parse_addr`]); calls other than
    /// exec have no deadline until [`Client::with_request_timeout`] sets one.
    pub fn new(addr: &str) -> Result<Self, ClientError> {
        let base = parse_addr(addr)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(ClientError::Transport)?;
        Ok(Self {
            base,
            http,
            request_timeout: None,
            token: None,
        })
    }

    /// Sends `Authorization: Bearer <token>` with every call (a daemon with
    /// a token file or `EMBERD_TOKEN` wants it).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets a deadline for every call except exec, whose deadline follows its
    /// `timeout_ms`.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// The daemon's base URL, ending in `/`.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// `GET /healthz`: Ok when the daemon answers 2xx.
    pub async fn healthz(&self) -> Result<(), ClientError> {
        self.send(Method::GET, "healthz", None::<&()>, self.request_timeout)
            .await
            .map(drop)
    }

    /// `GET /info`.
    pub async fn info(&self) -> Result<InfoResponse, ClientError> {
        self.call(Method::GET, "info", None::<&()>, self.request_timeout)
            .await
    }

    /// `POST /sandboxes`; `None` asks for the default pack.
    pub async fn create_sandbox(&self, language_pack: Option<&str>) -> Result<String, ClientError> {
        self.create_sandbox_with(&CreateSandboxRequest {
            language_pack: language_pack.map(str::to_string),
            ..CreateSandboxRequest::default()
        })
        .await
    }

    /// `POST /sandboxes` with every setting of the request (sizes, TTL, idle
    /// timeout); returns the new sandbox's id.
    pub async fn create_sandbox_with(
        &self,
        request: &CreateSandboxRequest,
    ) -> Result<String, ClientError> {
        let created: CreateSandboxResponse = self
            .call(
                Method::POST,
                "sandboxes",
                Some(request),
                self.request_timeout,
            )
            .await?;
        Ok(created.id)
    }

    /// `GET /sandboxes`.
    pub async fn list_sandboxes(&self) -> Result<Vec<SandboxInfo>, ClientError> {
        let list: SandboxList = self
            .call(Method::GET, "sandboxes", None::<&()>, self.request_timeout)
            .await?;
        Ok(list.sandboxes)
    }

    /// `GET /sandboxes/{id}`.
    pub async fn get_sandbox(&self, id: &str) -> Result<SandboxInfo, ClientError> {
        let route = sandbox_route(id, "")?;
        self.call(Method::GET, &route, None::<&()>, self.request_timeout)
            .await
    }

    /// `POST /sandboxes/{id}/exec`. A non-zero exit code or a timeout is a
    /// successful call; look at `exit_code` and `error` in the answer.
    pub async fn exec(&self, id: &str, request: &ExecRequest) -> Result<ExecResponse, ClientError> {
        let route = sandbox_route(id, "exec")?;
        let deadline = request
            .timeout_ms
            .map(|ms| Duration::from_millis(ms) + EXEC_TIMEOUT_GRACE);
        self.call(Method::POST, &route, Some(request), deadline)
            .await
    }

    /// `DELETE /sandboxes/{id}`.
    pub async fn delete_sandbox(&self, id: &str) -> Result<(), ClientError> {
        let route = sandbox_route(id, "")?;
        self.send(Method::DELETE, &route, None::<&()>, self.request_timeout)
            .await
            .map(drop)
    }

    pub(crate) async fn call<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        route: &str,
        body: Option<&B>,
        deadline: Option<Duration>,
    ) -> Result<T, ClientError> {
        let response = self.send(method, route, body, deadline).await?;
        self.json(response, route).await
    }

    pub(crate) async fn send<B: serde::Serialize>(
        &self,
        method: Method,
        route: &str,
        body: Option<&B>,
        deadline: Option<Duration>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut request = self.request(method, self.url(route, &[])?);
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(deadline) = deadline {
            request = request.timeout(deadline);
        }
        self.execute(request).await
    }

    /// The URL of `route` (relative to the base) with `query` appended.
    pub(crate) fn url(&self, route: &str, query: &[(&str, String)]) -> Result<Url, ClientError> {
        let mut url = self
            .base
            .join(route)
            .map_err(|e| ClientError::InvalidAddress {
                addr: format!("{}{route}", self.base),
                reason: e.to_string(),
            })?;
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        Ok(url)
    }

    /// A request to `url` carrying the bearer token (and no deadline).
    pub(crate) fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let request = self.http.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// The bearer token, for requests not made with reqwest (the WebSocket).
    pub(crate) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The deadline of calls that end with their answer (not of streams).
    pub(crate) fn request_timeout(&self) -> Option<Duration> {
        self.request_timeout
    }

    /// Sends `request`; a non-2xx answer becomes [`ClientError::Api`].
    pub(crate) async fn execute(
        &self,
        request: RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.unwrap_or_default();
        Err(ClientError::from_answer(status, &body))
    }

    /// Reads a 2xx answer's body as JSON.
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        response: reqwest::Response,
        route: &str,
    ) -> Result<T, ClientError> {
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.transport(e))?;
        serde_json::from_slice(&bytes).map_err(|source| ClientError::InvalidResponse {
            route: format!("/{}", route.split('?').next().unwrap_or(route)),
            status,
            source,
        })
    }

    pub(crate) fn transport(&self, source: reqwest::Error) -> ClientError {
        let addr = self.base.as_str().trim_end_matches('/').to_string();
        if source.is_connect() {
            ClientError::Unreachable { addr, source }
        } else if source.is_timeout() {
            ClientError::TimedOut { addr, source }
        } else {
            ClientError::Transport(source)
        }
    }
}

/// `sandboxes/{id}/{rest}` with the id encoded as one segment.
pub(crate) fn sandbox_route(id: &str, rest: &str) -> Result<String, ClientError> {
    let id = path_segment(id)?;
    Ok(if rest.is_empty() {
        format!("sandboxes/{id}")
    } else {
        format!("sandboxes/{id}/{rest}")
    })
}

/// Percent-encodes an id so that it stays one path segment (ids come from users).
/// Empty, `.` and `..` are refused: URL normalisation would drop or climb them.
fn path_segment(id: &str) -> Result<String, ClientError> {
    if id.is_empty() || id == "." || id == ".." {
        return Err(ClientError::InvalidId(id.to_string()));
    }
    let mut encoded = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    Ok(encoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_without_scheme_gets_http() {
        assert_eq!(
            parse_addr("127.0.0.1:7777").unwrap().as_str(),
            "http://127.0.0.1:7777/"
        );
        assert_eq!(
            parse_addr("http://localhost:9/").unwrap().as_str(),
            "http://localhost:9/"
        );
        assert_eq!(
            parse_addr("http://host:1/prefix").unwrap().as_str(),
            "http://host:1/prefix/"
        );
    }

    #[test]
    fn bad_addresses_are_rejected() {
        assert!(parse_addr("").is_err());
        assert!(parse_addr("ftp://host:1").is_err());
        assert!(parse_addr("http://").is_err());
        assert!(parse_addr("host:notaport").is_err());
    }

    #[test]
    fn routes_and_queries_are_encoded() {
        let client = Client::new("http://h:1/prefix").unwrap();
        let route = sandbox_route("sb 1", "files").unwrap();
        let url = client
            .url(
                &route,
                &[("path", "/a b/c&d=e#f?".into()), ("mkdir", "true".into())],
            )
            .unwrap();
        assert_eq!(
            url.as_str(),
            "http://h:1/prefix/sandboxes/sb%201/files?path=%2Fa+b%2Fc%26d%3De%23f%3F&mkdir=true"
        );
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs[0], ("path".into(), "/a b/c&d=e#f?".into()));
        assert_eq!(
            client
                .url(&sandbox_route("x", "").unwrap(), &[])
                .unwrap()
                .as_str(),
            "http://h:1/prefix/sandboxes/x"
        );
        assert!(sandbox_route("..", "exec").is_err());
    }

    #[test]
    fn ids_stay_one_path_segment() {
        assert_eq!(path_segment("sb_0123abcd").unwrap(), "sb_0123abcd");
        assert_eq!(path_segment("../info").unwrap(), "..%2Finfo");
        assert_eq!(path_segment("a b").unwrap(), "a%20b");
        assert!(path_segment("..").is_err());
        assert!(path_segment("").is_err());
    }
}
