//! Reading a request body within bounds: at most `limit` bytes, within the
//! body read timeout. A body over the limit is read on and thrown away, up to
//! [`LINGER_BYTES`] and [`LINGER_TIME`], before the 413 is sent (as nginx's
//! lingering close does), so that a client that writes its whole body before
//! reading, like Python's urllib, sees the 413 rather than a broken pipe.
//! Never holds more than `limit` bytes of a body.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use bytes::BytesMut;
use http_body_util::BodyExt;
use tokio::time::{timeout_at, Instant};

use super::ApiError;

/// Most bytes read and discarded past the limit before answering 413.
pub const LINGER_BYTES: u64 = 64 * 1024 * 1024;
/// Longest time spent discarding a body over the limit before answering 413.
pub const LINGER_TIME: Duration = Duration::from_secs(10);

/// Reads the whole body if it is at most `limit` bytes and arrives within `read_timeout`.
pub async fn read_bounded(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    read_timeout: Duration,
) -> Result<Bytes, ApiError> {
    let declared = content_length(headers);
    if declared.is_some_and(|len| len > limit as u64) && expects_continue(headers) {
        // The client waits for a 100 before it sends: answer without reading.
        return Err(ApiError::BodyTooLarge(limit));
    }
    let deadline = Instant::now() + read_timeout;
    let mut body = body;
    let mut buffer =
        BytesMut::with_capacity(declared.map_or(0, |len| len.min(limit as u64) as usize));
    loop {
        let frame = match timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(ApiError::BodyTimeout(read_timeout)),
            Ok(None) => return Ok(buffer.freeze()),
            Ok(Some(Err(e))) => return Err(ApiError::BadBody(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if buffer.len() + data.len() > limit {
            let over = (buffer.len() + data.len() - limit) as u64;
            drop(buffer);
            linger(body, over, LINGER_BYTES, LINGER_TIME).await;
            return Err(ApiError::BodyTooLarge(limit));
        }
        buffer.extend_from_slice(&data);
    }
}

/// Reads and drops the rest of `body` until it ends or a linger bound passes.
pub(super) async fn linger(mut body: Body, mut discarded: u64, max_bytes: u64, max_time: Duration) {
    let deadline = Instant::now() + max_time;
    while discarded <= max_bytes {
        match timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                discarded += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            Ok(None) => return,
            Ok(Some(Err(_))) | Err(_) => break,
        }
    }
    tracing::debug!(discarded, "stopped discarding an oversized body");
}

pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub(super) fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole() {
        let body = Body::from(vec![b'x'; 1000]);
        let bytes = read_bounded(&HeaderMap::new(), body, 1000, SECOND)
            .await
            .unwrap();
        assert_eq!(bytes.len(), 1000);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_read_to_its_end_then_refused() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let sent = tokio::spawn(async move {
            for _ in 0..10 {
                tx.send(Ok(Bytes::from(vec![b'x'; 1000]))).await.unwrap();
            }
        });
        let err = read_bounded(&HeaderMap::new(), body, 2500, SECOND)
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::BodyTooLarge(2500)), "{err}");
        // Every chunk was taken: the reader lingered until the body ended.
        sent.await.unwrap();
    }

    fn one_chunk_then_nothing(len: usize) -> Body {
        let stream = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; len]))])
            .chain(futures::stream::pending());
        Body::from_stream(stream)
    }

    #[tokio::test]
    async fn a_slow_body_times_out() {
        let headers = HeaderMap::new();
        let read = read_bounded(
            &headers,
            one_chunk_then_nothing(1),
            100,
            Duration::from_millis(100),
        );
        let err = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the body read timeout fired")
            .unwrap_err();
        assert!(matches!(err, ApiError::BodyTimeout(_)), "{err}");
    }

    #[tokio::test]
    async fn lingering_stops_at_its_bounds() {
        // A client that stops sending: the time bound ends the wait.
        let linger_time = linger(
            one_chunk_then_nothing(10),
            0,
            u64::MAX,
            Duration::from_millis(100),
        );
        tokio::time::timeout(Duration::from_secs(10), linger_time)
            .await
            .expect("lingering ended at its time bound");
        // A client that never stops: the byte bound ends the reading.
        let endless =
            futures::stream::repeat_with(|| Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 4096])));
        let linger_bytes = linger(
            Body::from_stream(endless),
            0,
            1 << 20,
            Duration::from_secs(3600),
        );
        tokio::time::timeout(Duration::from_secs(10), linger_bytes)
            .await
            .expect("lingering ended at its byte bound");
    }

    #[tokio::test]
    async fn an_oversized_body_announced_with_expect_continue_is_refused_unread() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, "5000".parse().unwrap());
        headers.insert(header::EXPECT, "100-continue".parse().unwrap());
        // A body that never arrives: reading it would hang.
        let body = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let err = read_bounded(&headers, body, 100, Duration::from_secs(3600))
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::BodyTooLarge(100)), "{err}");
    }
}
