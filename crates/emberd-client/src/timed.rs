//! Calls that also return the daemon's own time for them, read from the
//! `Server-Timing: app;dur=<ms>` header the daemon adds to every answer:
//! what a benchmark needs to tell the daemon's share of a call from the
//! client's (HTTP, JSON, loopback).

use std::time::Duration;

use emberd_api::{CreateSandboxRequest, CreateSandboxResponse, ExecRequest, ExecResponse};
use reqwest::Method;

use crate::{sandbox_route, Client, ClientError, EXEC_TIMEOUT_GRACE};

/// An answer and the daemon's time for it (`None` when the daemon sent no
/// `Server-Timing`, as daemons before the header did not).
#[derive(Debug, Clone)]
pub struct Timed<T> {
    pub value: T,
    pub server_time: Option<Duration>,
}

impl Client {
    /// [`Client::create_sandbox_with`], with the daemon's time.
    pub async fn create_sandbox_timed(
        &self,
        request: &CreateSandboxRequest,
    ) -> Result<Timed<String>, ClientError> {
        let response = self
            .send(
                Method::POST,
                "sandboxes",
                Some(request),
                self.request_timeout(),
            )
            .await?;
        let server_time = server_time(response.headers());
        let created: CreateSandboxResponse = self.json(response, "sandboxes").await?;
        Ok(Timed {
            value: created.id,
            server_time,
        })
    }

    /// [`Client::exec`], with the daemon's time.
    pub async fn exec_timed(
        &self,
        id: &str,
        request: &ExecRequest,
    ) -> Result<Timed<ExecResponse>, ClientError> {
        let route = sandbox_route(id, "exec")?;
        let deadline = request
            .timeout_ms
            .map(|ms| Duration::from_millis(ms) + EXEC_TIMEOUT_GRACE);
        let response = self
            .send(Method::POST, &route, Some(request), deadline)
            .await?;
        let server_time = server_time(response.headers());
        let value = self.json(response, &route).await?;
        Ok(Timed { value, server_time })
    }
}

/// The `app` entry's `dur` of `Server-Timing`, in milliseconds.
pub fn server_time(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get_all("server-timing")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|metric| {
            let mut parts = metric.split(';').map(str::trim);
            if parts.next()? != "app" {
                return None;
            }
            let ms: f64 = parts.find_map(|p| p.strip_prefix("dur="))?.parse().ok()?;
            (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64(ms / 1000.0))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn the_app_duration_is_read_and_anything_else_is_none() {
        let mut headers = HeaderMap::new();
        assert_eq!(server_time(&headers), None);
        headers.insert(
            "server-timing",
            HeaderValue::from_static("db;dur=3, app;dur=1.250"),
        );
        assert_eq!(server_time(&headers), Some(Duration::from_micros(1250)));
        headers.insert("server-timing", HeaderValue::from_static("app;dur=-1"));
        assert_eq!(server_time(&headers), None);
        headers.insert("server-timing", HeaderValue::from_static("app;desc=x"));
        assert_eq!(server_time(&headers), None);
    }
}
