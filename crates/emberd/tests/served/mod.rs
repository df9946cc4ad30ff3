//! The fake-backend daemon served on a real socket, so that SSE framing,
//! flushing and WebSocket upgrades are what a client sees, with helpers
//! for the process routes.

#![allow(dead_code)]

use std::time::Duration;

use axum::http::{Method, StatusCode};
use emberd::sandbox::{Limits, ProcessLimits};
use futures::StreamExt as _;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::fixture::{Daemon, Options, BOUND};
use crate::sse::Sse;

/// A daemon served on a loopback port; stops serving on drop.
pub struct Served {
    pub daemon: Daemon,
    pub base: String,
    pub http: reqwest::Client,
    stop: CancellationToken,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A fake-backend daemon set up as `options` say, served on a loopback port.
pub async fn serve(options: Options) -> Served {
    let daemon = Daemon::with(options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(emberd::api::serve(
        listener,
        daemon.app.clone(),
        Duration::from_secs(10),
        stop.clone(),
    ));
    Served {
        daemon,
        base,
        http: reqwest::Client::new(),
        stop,
    }
}

/// Options with these process limits.
pub fn limits(max_running: usize, log_bytes: usize) -> Options {
    Options {
        limits: Limits {
            processes: ProcessLimits {
                max_running,
                log_bytes,
            },
            ..Limits::default()
        },
        ..Options::default()
    }
}

impl Served {
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.daemon.call(method, path, body).await
    }

    pub async fn start(&self, id: &str, body: Value) -> u64 {
        let (status, answer) = self
            .call(
                Method::POST,
                &format!("/sandboxes/{id}/processes"),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        answer["pid"].as_u64().unwrap()
    }

    pub async fn info(&self, id: &str, pid: u64) -> Value {
        let (status, info) = self
            .call(
                Method::GET,
                &format!("/sandboxes/{id}/processes/{pid}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{info}");
        info
    }

    pub async fn wait_state(&self, id: &str, pid: u64, state: &str) -> Value {
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            let info = self.info(id, pid).await;
            if info["state"] == state {
                return info;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "process {pid} never became {state}: {info}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn stdin(&self, id: &str, pid: u64, query: &str, body: Vec<u8>) -> (u16, String) {
        let response = self
            .http
            .post(format!(
                "{}/sandboxes/{id}/processes/{pid}/stdin{query}",
                self.base
            ))
            .body(body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    pub async fn page(&self, id: &str, pid: u64, cursor: u64) -> Value {
        let (status, page) = self
            .call(
                Method::GET,
                &format!("/sandboxes/{id}/processes/{pid}/output?cursor={cursor}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page
    }

    /// Opens an SSE stream; fails on a non-200.
    pub async fn events(&self, request: reqwest::RequestBuilder) -> Sse {
        Sse::open(request, BOUND).await
    }

    pub async fn follow(&self, id: &str, pid: u64, query: &str, last_id: Option<&str>) -> Sse {
        let mut request = self.http.get(format!(
            "{}/sandboxes/{id}/processes/{pid}/output?follow=true{query}",
            self.base
        ));
        if let Some(last) = last_id {
            request = request.header("last-event-id", last);
        }
        self.events(request).await
    }

    pub async fn exec_events(&self, id: &str, body: Value) -> Sse {
        let request = self
            .http
            .post(format!("{}/sandboxes/{id}/exec", self.base))
            .json(&body);
        self.events(request).await
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next frame; fails after [`BOUND`].
pub async fn next_frame(
    ws: &mut Ws,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    tokio::time::timeout(BOUND, ws.next())
        .await
        .expect("a frame within the bound")
}
