//! A minimal Server-Sent Events reader for the tests: events as they
//! arrive (with their arrival instant), keep-alive comments skipped.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::Value;

/// One Server-Sent Event, with when it arrived.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
    pub at: Instant,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    /// The bytes of an output event (text, or base64 when flagged).
    pub fn bytes(&self) -> Vec<u8> {
        use base64::Engine as _;
        let data = self.json();
        let text = data["data"].as_str().unwrap();
        if data["base64"] == true {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .unwrap()
        } else {
            text.as_bytes().to_vec()
        }
    }
}

type Body = std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// An open event stream.
pub struct Sse {
    body: Body,
    buffer: Vec<u8>,
    /// Longest wait for one event.
    bound: Duration,
}

impl Sse {
    /// Sends `request` asking for events; fails unless the answer is a 200 event stream.
    pub async fn open(request: reqwest::RequestBuilder, bound: Duration) -> Sse {
        let response = request
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("the stream opens");
        let status = response.status();
        if status != 200 {
            panic!("{status}: {}", response.text().await.unwrap_or_default());
        }
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Sse {
            body: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
            bound,
        }
    }

    /// The next event, `None` when the stream ended; fails after the bound.
    pub async fn next(&mut self) -> Option<SseEvent> {
        tokio::time::timeout(self.bound, self.next_unbounded())
            .await
            .expect("an event or the end within the bound")
    }

    async fn next_unbounded(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8(block).unwrap();
                let (mut event, mut data, mut id) = (String::new(), Vec::new(), None);
                for line in text.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        event = value.trim_start().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push(value.strip_prefix(' ').unwrap_or(value).to_owned());
                    } else if let Some(value) = line.strip_prefix("id:") {
                        id = Some(value.trim_start().to_owned());
                    }
                }
                if event.is_empty() && data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some(SseEvent {
                    event,
                    data: data.join("\n"),
                    id,
                    at: Instant::now(),
                });
            }
            match self.body.next().await {
                Some(Ok(bytes)) => self.buffer.extend_from_slice(&bytes),
                Some(Err(e)) => panic!("the stream broke: {e}"),
                None => return None,
            }
        }
    }

    /// Every event until the end.
    pub async fn rest(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}
