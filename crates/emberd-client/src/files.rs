//! The files API: `/sandboxes/{id}/files…`. Uploads are read from their
//! source as they are sent and downloads written to their destination as
//! they arrive: no transfer is ever held whole in memory. Directories move
//! as tar streams; building and unpacking them is the caller's business.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use emberd_api::files::header;
use emberd_api::{FileKind, FileList, WriteResult};
use futures::{Stream, StreamExt as _};
use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::Method;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};

use crate::{sandbox_route, Client, ClientError};

/// Called with the bytes moved so far, after each piece of a transfer.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// The `Content-Type` of a tar stream.
const TAR: &str = "application/x-tar";

/// Query options of `PUT …/files`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Make missing parent directories (`mkdir=true`).
    pub mkdir: bool,
    /// Permission bits of the new file (`mode=0755`).
    pub mode: Option<u32>,
    /// Who owns what is written: `sandbox` (the default) or `root`.
    pub user: Option<String>,
}

impl PutOptions {
    fn query(&self, path: &str) -> Vec<(&'static str, String)> {
        let mut query = vec![("path", path.to_owned())];
        if self.mkdir {
            query.push(("mkdir", "true".to_owned()));
        }
        if let Some(mode) = self.mode {
            query.push(("mode", format!("{mode:04o}")));
        }
        if let Some(user) = &self.user {
            query.push(("user", user.clone()));
        }
        query
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// The body of an upload, read as it is sent.
pub struct UploadBody {
    stream: ByteStream,
    len: Option<u64>,
}

impl std::fmt::Debug for UploadBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadBody")
            .field("len", &self.len)
            .finish()
    }
}

impl UploadBody {
    /// Bytes read from `reader`; `len`, when known, is sent as
    /// `Content-Length` (the daemon can then refuse a transfer over its
    /// limit before it starts) and must be exact.
    pub fn from_reader(reader: impl AsyncRead + Send + 'static, len: Option<u64>) -> Self {
        Self {
            stream: Box::pin(tokio_util::io::ReaderStream::with_capacity(
                reader,
                64 * 1024,
            )),
            len,
        }
    }

    /// The contents of a local file, with its length.
    pub async fn from_file(path: &Path) -> Result<Self, ClientError> {
        let file = tokio::fs::File::open(path).await.map_err(ClientError::Io)?;
        let len = file.metadata().await.map_err(ClientError::Io)?.len();
        Ok(Self::from_reader(file, Some(len)))
    }

    /// Bytes already in memory.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        let len = bytes.len() as u64;
        Self {
            stream: Box::pin(futures::stream::once(async move { Ok(bytes) })),
            len: Some(len),
        }
    }

    /// Calls `progress` with the bytes read so far as the upload goes.
    pub fn with_progress(self, progress: Progress) -> Self {
        let mut sent = 0u64;
        Self {
            stream: Box::pin(self.stream.inspect(move |chunk| {
                if let Ok(chunk) = chunk {
                    sent += chunk.len() as u64;
                    progress(sent);
                }
            })),
            len: self.len,
        }
    }

    /// The announced length, when known.
    pub fn content_length(&self) -> Option<u64> {
        self.len
    }
}

/// What `HEAD …/files?path=` (and a download's headers) say about a path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileStat {
    pub kind: Option<FileKind>,
    /// Permission bits.
    pub mode: Option<u32>,
    /// RFC 3339 UTC.
    pub mtime: Option<String>,
    /// `Content-Length`: the size of a file.
    pub size: Option<u64>,
}

impl FileStat {
    fn from_headers(headers: &HeaderMap) -> Result<Self, ClientError> {
        let text = |name: &str| -> Result<Option<String>, ClientError> {
            headers
                .get(name)
                .map(|v| {
                    v.to_str()
                        .map(|s| s.trim().to_owned())
                        .map_err(|_| bad_header(name, &String::from_utf8_lossy(v.as_bytes())))
                })
                .transpose()
        };
        let kind = text(header::KIND)?
            .map(|k| {
                serde_json::from_value::<FileKind>(serde_json::Value::String(k.clone()))
                    .map_err(|_| bad_header(header::KIND, &k))
            })
            .transpose()?;
        let mode = text(header::MODE)?
            .map(|m| {
                u32::from_str_radix(m.trim_start_matches("0o"), 8)
                    .map_err(|_| bad_header(header::MODE, &m))
            })
            .transpose()?;
        let size = text(CONTENT_LENGTH.as_str())?
            .map(|n| {
                n.parse::<u64>()
                    .map_err(|_| bad_header(CONTENT_LENGTH.as_str(), &n))
            })
            .transpose()?;
        Ok(FileStat {
            kind,
            mode,
            mtime: text(header::MTIME)?,
            size,
        })
    }
}

fn bad_header(name: &str, value: &str) -> ClientError {
    ClientError::InvalidHeader {
        header: name.to_owned(),
        value: value.to_owned(),
    }
}

/// A download whose body has not been read yet.
pub struct Download {
    response: reqwest::Response,
    stat: FileStat,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("stat", &self.stat)
            .finish()
    }
}

impl Download {
    /// What the answer's headers say (size, mode, kind, mtime).
    pub fn stat(&self) -> &FileStat {
        &self.stat
    }

    /// The body's length, when the daemon announced it.
    pub fn content_length(&self) -> Option<u64> {
        self.stat.size
    }

    /// The body as it arrives.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, ClientError>> + Send {
        self.response
            .bytes_stream()
            .map(|chunk| chunk.map_err(ClientError::Transport))
    }

    /// Writes the body to `writer` as it arrives, calling `progress` with
    /// the bytes written so far; returns their count. A body shorter than
    /// its announced length is an error.
    pub async fn write_to<W: AsyncWrite + Unpin>(
        self,
        writer: &mut W,
        progress: Option<&(dyn Fn(u64) + Send + Sync)>,
    ) -> Result<u64, ClientError> {
        let expected = self.content_length();
        let mut stream = std::pin::pin!(self.into_stream());
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            writer.write_all(&chunk).await.map_err(ClientError::Io)?;
            written += chunk.len() as u64;
            if let Some(progress) = progress {
                progress(written);
            }
        }
        writer.flush().await.map_err(ClientError::Io)?;
        match expected {
            Some(expected) if written < expected => Err(ClientError::ShortBody {
                got: written,
                expected,
            }),
            _ => Ok(written),
        }
    }
}

impl Client {
    /// `PUT …/files?path=`: writes `body` to the file at `path`.
    pub async fn put_file(
        &self,
        id: &str,
        path: &str,
        body: UploadBody,
        options: &PutOptions,
    ) -> Result<WriteResult, ClientError> {
        self.put(id, path, body, options, None).await
    }

    /// `PUT …/files?path=` with a tar body: unpacks it into directory `dir`.
    pub async fn put_tar(
        &self,
        id: &str,
        dir: &str,
        body: UploadBody,
        options: &PutOptions,
    ) -> Result<WriteResult, ClientError> {
        self.put(id, dir, body, options, Some(TAR)).await
    }

    async fn put(
        &self,
        id: &str,
        path: &str,
        body: UploadBody,
        options: &PutOptions,
        content_type: Option<&str>,
    ) -> Result<WriteResult, ClientError> {
        let route = sandbox_route(id, "files")?;
        let mut request = self
            .request(Method::PUT, self.url(&route, &options.query(path))?)
            .header(
                CONTENT_TYPE,
                content_type.unwrap_or("application/octet-stream"),
            );
        if let Some(len) = body.len {
            request = request.header(CONTENT_LENGTH, len);
        }
        let request = request.body(reqwest::Body::wrap_stream(body.stream));
        let response = self.execute(request).await?;
        self.json(response, &route).await
    }

    /// `HEAD …/files?path=`: kind, mode, mtime and size of `path`.
    pub async fn stat_file(&self, id: &str, path: &str) -> Result<FileStat, ClientError> {
        let route = sandbox_route(id, "files")?;
        let mut request = self.request(
            Method::HEAD,
            self.url(&route, &[("path", path.to_owned())])?,
        );
        if let Some(deadline) = self.request_timeout() {
            request = request.timeout(deadline);
        }
        let response = self.execute(request).await?;
        FileStat::from_headers(response.headers())
    }

    /// `GET …/files?path=`: the bytes of the file at `path`.
    pub async fn get_file(&self, id: &str, path: &str) -> Result<Download, ClientError> {
        self.get(id, &[("path", path.to_owned())]).await
    }

    /// `GET …/files?path=&format=tar`: the directory at `path` as a tar.
    pub async fn get_tar(&self, id: &str, path: &str) -> Result<Download, ClientError> {
        self.get(
            id,
            &[("path", path.to_owned()), ("format", "tar".to_owned())],
        )
        .await
    }

    async fn get(&self, id: &str, query: &[(&str, String)]) -> Result<Download, ClientError> {
        let route = sandbox_route(id, "files")?;
        let response = self
            .execute(self.request(Method::GET, self.url(&route, query)?))
            .await?;
        let stat = FileStat::from_headers(response.headers())?;
        Ok(Download { response, stat })
    }

    /// `DELETE …/files?path=`; `recursive` for a directory with contents.
    pub async fn delete_file(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<(), ClientError> {
        let route = sandbox_route(id, "files")?;
        let mut query = vec![("path", path.to_owned())];
        if recursive {
            query.push(("recursive", "true".to_owned()));
        }
        let mut request = self.request(Method::DELETE, self.url(&route, &query)?);
        if let Some(deadline) = self.request_timeout() {
            request = request.timeout(deadline);
        }
        self.execute(request).await.map(drop)
    }

    /// `GET …/files/list?path=[&depth=]`.
    pub async fn list_files(
        &self,
        id: &str,
        path: &str,
        depth: Option<u32>,
    ) -> Result<FileList, ClientError> {
        let route = sandbox_route(id, "files/list")?;
        let mut query = vec![("path", path.to_owned())];
        if let Some(depth) = depth {
            query.push(("depth", depth.to_string()));
        }
        let mut request = self.request(Method::GET, self.url(&route, &query)?);
        if let Some(deadline) = self.request_timeout() {
            request = request.timeout(deadline);
        }
        let response = self.execute(request).await?;
        self.json(response, &route).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn put_options_become_the_query() {
        let options = PutOptions {
            mkdir: true,
            mode: Some(0o755),
            user: Some("root".into()),
        };
        assert_eq!(
            options.query("/a b"),
            [
                ("path", "/a b".to_owned()),
                ("mkdir", "true".to_owned()),
                ("mode", "0755".to_owned()),
                ("user", "root".to_owned())
            ]
        );
        assert_eq!(
            PutOptions::default().query("/x"),
            [("path", "/x".to_owned())]
        );
    }

    #[test]
    fn stat_reads_the_files_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::KIND, HeaderValue::from_static("dir"));
        headers.insert(header::MODE, HeaderValue::from_static("0755"));
        headers.insert(
            header::MTIME,
            HeaderValue::from_static("2026-01-01T00:00:00Z"),
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("4096"));
        assert_eq!(
            FileStat::from_headers(&headers).unwrap(),
            FileStat {
                kind: Some(FileKind::Dir),
                mode: Some(0o755),
                mtime: Some("2026-01-01T00:00:00Z".into()),
                size: Some(4096),
            }
        );
        assert_eq!(
            FileStat::from_headers(&HeaderMap::new()).unwrap(),
            FileStat::default()
        );
        headers.insert(header::KIND, HeaderValue::from_static("socket"));
        assert!(matches!(
            FileStat::from_headers(&headers),
            Err(ClientError::InvalidHeader { header, .. }) if header == "x-emberd-kind"
        ));
    }

    #[tokio::test]
    async fn upload_progress_counts_the_bytes_read() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let seen = Arc::new(AtomicU64::new(0));
        let counter = seen.clone();
        let body = UploadBody::from_reader(&b"0123456789"[..], Some(10))
            .with_progress(Arc::new(move |n| counter.store(n, Ordering::SeqCst)));
        assert_eq!(body.content_length(), Some(10));
        let chunks: Vec<_> = body.stream.collect().await;
        let total: usize = chunks.iter().map(|c| c.as_ref().unwrap().len()).sum();
        assert_eq!(total, 10);
        assert_eq!(seen.load(Ordering::SeqCst), 10);
    }
}
