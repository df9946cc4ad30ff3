//! The files API (see `docs/files.md`): `GET`/`HEAD`/`PUT`/`DELETE
//! /sandboxes/{id}/files?path=` and `GET /sandboxes/{id}/files/list?path=`.
//!
//! Parses queries and headers and moves bytes between the HTTP body and the
//! manager's transfer handles, chunk by chunk: an upload is never held
//! whole, it goes on as it arrives (a stall between chunks longer than the
//! body read timeout ends it); a download is the guest's stream. Holds no
//! file logic: paths, limits and guest errors are the manager's.

use std::time::SystemTime;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use emberd_api::files::{header as file_header, FileList, WriteResult};
use emberd_api::ErrorBody;
use futures::StreamExt as _;
use http_body_util::BodyExt as _;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::body::{content_length, expects_continue, linger, LINGER_BYTES, LINGER_TIME};
use super::openapi::Binary;
use super::{wire, ApiError, AppState};
use crate::guest::files::{EntryKind, FileStat, Owner, UploadTarget};
use crate::sandbox::{FileStream, SandboxError};

/// The media type of a tar stream, up and down.
pub const TAR_MEDIA_TYPE: &str = "application/x-tar";

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(download, head, upload, remove))
        .routes(routes!(list))
}

/// The query of `…/files`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct FileQuery {
    /// The absolute path in the sandbox.
    #[serde(default)]
    #[param(required = true)]
    path: String,
    /// `PUT`: make missing parent directories.
    mkdir: Option<bool>,
    /// `PUT`: permission bits in octal.
    mode: Option<String>,
    /// `PUT`: who owns what is created: `sandbox` (default) or `root`.
    user: Option<String>,
    /// `GET`: `raw` (the default) or `tar` to pack a directory.
    #[param(pattern = "^(raw|tar)$")]
    format: Option<String>,
    /// `DELETE`: remove a directory with its entries.
    recursive: Option<bool>,
}

/// The query of `…/files/list`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// The directory's absolute path.
    #[serde(default)]
    #[param(required = true)]
    path: String,
    /// Levels below the directory to list (1 when absent).
    depth: Option<u32>,
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::BadQuery(e.body_text()))
}

/// Permission bits from octal text: "755", "0755", "0o755".
fn parse_mode(text: &str) -> Result<u32, ApiError> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 && !digits.is_empty() => Ok(mode),
        _ => Err(ApiError::BadQuery(format!(
            "mode {text:?} is not octal permission bits (like 0644)"
        ))),
    }
}

fn parse_owner(user: Option<&str>) -> Result<Owner, ApiError> {
    match user {
        None | Some("sandbox") => Ok(Owner::Sandbox),
        Some("root") => Ok(Owner::Root),
        Some(other) => Err(ApiError::BadQuery(format!(
            "user {other:?} is neither \"sandbox\" nor \"root\""
        ))),
    }
}

fn is_tar(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(TAR_MEDIA_TYPE))
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::File => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
        EntryKind::Other => "other",
    }
}

/// The metadata headers of `GET` and `HEAD`.
fn stat_headers(stat: &FileStat) -> [(HeaderName, HeaderValue); 4] {
    let text = |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""));
    [
        (header::CONTENT_LENGTH, HeaderValue::from(stat.size)),
        (
            HeaderName::from_static(file_header::MODE),
            text(format!("{:04o}", stat.mode)),
        ),
        (
            HeaderName::from_static(file_header::MTIME),
            text(rfc3339(stat.modified)),
        ),
        (
            HeaderName::from_static(file_header::KIND),
            HeaderValue::from_static(kind_name(stat.kind)),
        ),
    ]
}

/// A download's stream as a body; an error ends it early (the client sees
/// a truncated body) and is logged, since no status can carry it any more.
fn body_of(stream: FileStream, id: String) -> Body {
    Body::from_stream(stream.map(move |chunk| {
        if let Err(e) = &chunk {
            tracing::info!(sandbox = %id, error = %crate::error_chain::render(e), "download ended early");
        }
        chunk
    }))
}

/// A file's bytes (with its metadata in `x-emberd-*` headers), or a
/// directory packed as a tar with `format=tar`; streamed.
#[utoipa::path(get, path = "/sandboxes/{id}/files", tag = "files", operation_id = "download_file",
    params(("id" = String, Path, description = "The sandbox's id"), FileQuery),
    responses(
        (status = 200, description = "The file, or the directory as a tar",
            content(
                (Binary = "application/octet-stream"),
                (Binary = "application/x-tar"),
            ),
            headers(
                ("x-emberd-mode" = String, description = "Permission bits in octal (a file only)"),
                ("x-emberd-mtime" = String, description = "RFC 3339 UTC modification time (a file only)"),
                ("x-emberd-kind" = String, description = "file, dir, symlink or other (a file only)"),
            )),
        (status = 400, description = "A bad query or path (relative, with `..`, too long)", body = ErrorBody),
        (status = 404, description = "No such sandbox or file", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or the path is of the wrong kind", body = ErrorBody),
        (status = 502, description = "The guest agent misbehaved", body = ErrorBody),
        (status = 413, description = "The file is over the transfer limit", body = ErrorBody),
    ))]
async fn download(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    match q.format.as_deref() {
        None | Some("raw") => {
            let (stat, stream) = state.manager.file_download(&id, &q.path).await?;
            let mut response = body_of(stream, id).into_response();
            response.headers_mut().extend(stat_headers(&stat));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            Ok(response)
        }
        Some("tar") => {
            let stream = state.manager.file_download_tar(&id, &q.path).await?;
            let mut response = body_of(stream, id).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(TAR_MEDIA_TYPE),
            );
            Ok(response)
        }
        Some(other) => Err(ApiError::BadQuery(format!(
            "format {other:?} is neither \"raw\" nor \"tar\""
        ))),
    }
}

/// A path's metadata, in headers.
#[utoipa::path(head, path = "/sandboxes/{id}/files", tag = "files", operation_id = "stat_file",
    params(("id" = String, Path, description = "The sandbox's id"), FileQuery),
    responses(
        (status = 200, description = "The path exists",
            headers(
                ("x-emberd-mode" = String, description = "Permission bits in octal"),
                ("x-emberd-mtime" = String, description = "RFC 3339 UTC modification time"),
                ("x-emberd-kind" = String, description = "file, dir, symlink or other"),
            )),
        (status = 400, description = "A bad query or path (relative, with `..`, too long)", body = ErrorBody),
        (status = 404, description = "No such sandbox or file", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or the path is of the wrong kind", body = ErrorBody),
        (status = 502, description = "The guest agent misbehaved", body = ErrorBody),
    ))]
async fn head(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let stat = state.manager.file_stat(&id, &q.path, true).await?;
    let mut response = StatusCode::OK.into_response();
    response.headers_mut().extend(stat_headers(&stat));
    Ok(response)
}

/// Writes the body to a file, or unpacks it into a directory when it is
/// `application/x-tar`; streamed.
#[utoipa::path(put, path = "/sandboxes/{id}/files", tag = "files", operation_id = "upload_file",
    params(("id" = String, Path, description = "The sandbox's id"), FileQuery),
    request_body(description = "The file's bytes, or a tar to unpack",
        content(
            (Binary = "application/octet-stream"),
            (Binary = "application/x-tar"),
        )),
    responses(
        (status = 201, description = "Written", body = WriteResult),
        (status = 400, description = "A bad query or path (relative, with `..`, too long)", body = ErrorBody),
        (status = 404, description = "No such sandbox or file", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or the path is of the wrong kind", body = ErrorBody),
        (status = 502, description = "The guest agent misbehaved", body = ErrorBody),
        (status = 408, description = "The body stalled", body = ErrorBody),
        (status = 413, description = "Over the transfer limit, or no space left in the sandbox", body = ErrorBody),
        (status = 503, description = "The daemon is shutting down", body = ErrorBody),
    ))]
async fn upload(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<WriteResult>), ApiError> {
    // An unknown sandbox or a bad request is answered before a byte of the
    // body is read.
    state.manager.check_exists(&id)?;
    let q = query(q)?;
    let owner = parse_owner(q.user.as_deref())?;
    let tar = is_tar(&headers);
    let target = if tar {
        if q.mode.is_some() || q.mkdir.is_some() {
            return Err(ApiError::BadQuery(
                "mode and mkdir apply to a file upload, not to a tar".into(),
            ));
        }
        UploadTarget::Tar {
            path: q.path.clone(),
            owner,
        }
    } else {
        UploadTarget::File {
            path: q.path.clone(),
            mode: q.mode.as_deref().map(parse_mode).transpose()?,
            make_parents: q.mkdir.unwrap_or(false),
            owner,
        }
    };
    let declared = content_length(&headers);
    let mut body = body;
    if declared.is_some_and(|len| len > state.manager.max_transfer_bytes()) {
        if !expects_continue(&headers) {
            linger(body, 0, LINGER_BYTES, LINGER_TIME).await;
        }
        return Err(SandboxError::TransferTooLarge {
            limit_mib: state.manager.max_transfer_bytes() >> 20,
        }
        .into());
    }
    let mut upload = state.manager.file_upload(&id, target, declared).await?;
    let stall = state.body_read_timeout;
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(stall, body.frame()) => next,
            e = upload.interrupted() => return Err(e.into()),
        };
        let frame = match next {
            Err(_) => {
                upload.abandon().await;
                return Err(ApiError::BodyStalled(stall));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                upload.abandon().await;
                return Err(ApiError::BadBody(e.to_string()));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if let Err(e) = upload.send(data).await {
            // Nothing of the upload stays in the guest; then let a client
            // that writes its whole body before reading see the answer.
            upload.abandon().await;
            linger(body, 0, LINGER_BYTES, LINGER_TIME).await;
            return Err(e.into());
        }
    }
    let reply = upload.finish().await?;
    Ok((
        StatusCode::CREATED,
        Json(WriteResult {
            path: q.path,
            bytes: reply.bytes,
            entries: reply.entries,
        }),
    ))
}

/// Removes a file, or a directory with `recursive=true`.
#[utoipa::path(delete, path = "/sandboxes/{id}/files", tag = "files", operation_id = "remove_file",
    params(("id" = String, Path, description = "The sandbox's id"), FileQuery),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "A bad query or path (relative, with `..`, too long)", body = ErrorBody),
        (status = 404, description = "No such sandbox or file", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or the path is of the wrong kind", body = ErrorBody),
        (status = 502, description = "The guest agent misbehaved", body = ErrorBody),
    ))]
async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let q = query(q)?;
    state
        .manager
        .file_remove(&id, &q.path, q.recursive.unwrap_or(false))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A directory's entries, to a depth.
#[utoipa::path(get, path = "/sandboxes/{id}/files/list", tag = "files", operation_id = "list_files",
    params(("id" = String, Path, description = "The sandbox's id"), ListQuery),
    responses(
        (status = 200, description = "The entries", body = FileList),
        (status = 400, description = "A bad query or path (relative, with `..`, too long)", body = ErrorBody),
        (status = 404, description = "No such sandbox or file", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or the path is of the wrong kind", body = ErrorBody),
        (status = 502, description = "The guest agent misbehaved", body = ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<FileList>, ApiError> {
    let q = query(q)?;
    let listing = state.manager.file_list(&id, &q.path, q.depth).await?;
    Ok(Json(FileList {
        entries: listing.entries.into_iter().map(wire::file_entry).collect(),
        truncated: listing.truncated,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal_permission_bits() {
        assert_eq!(parse_mode("755").unwrap(), 0o755);
        assert_eq!(parse_mode("0644").unwrap(), 0o644);
        assert_eq!(parse_mode("0o4755").unwrap(), 0o4755);
        for bad in ["", "0o", "8", "rwx", "17777", "-1"] {
            assert!(parse_mode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn owners_are_the_sandbox_user_unless_root_is_asked() {
        assert_eq!(parse_owner(None).unwrap(), Owner::Sandbox);
        assert_eq!(parse_owner(Some("sandbox")).unwrap(), Owner::Sandbox);
        assert_eq!(parse_owner(Some("root")).unwrap(), Owner::Root);
        assert!(parse_owner(Some("nobody")).is_err());
    }

    #[test]
    fn a_tar_body_is_told_by_its_media_type() {
        let mut headers = HeaderMap::new();
        assert!(!is_tar(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            "Application/X-Tar; x=1".parse().unwrap(),
        );
        assert!(is_tar(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            "application/octet-stream".parse().unwrap(),
        );
        assert!(!is_tar(&headers));
    }

    #[test]
    fn headers_carry_octal_modes_and_kinds() {
        let stat = FileStat {
            path: "/a/b".into(),
            name: "b".into(),
            kind: EntryKind::Symlink,
            size: 1,
            mode: 0o777,
            modified: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400),
            link_target: Some("c".into()),
        };
        let headers = stat_headers(&stat);
        assert_eq!(headers[1].1, "0777");
        assert_eq!(headers[3].1, "symlink");
    }
}
