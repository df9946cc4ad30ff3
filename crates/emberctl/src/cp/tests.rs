//! Tests of `cp`: argument forms, tar shape and safety, and whole copies
//! through a stub of the files routes.

use super::*;

#[test]
fn sandbox_paths_are_told_from_local_ones() {
    assert_eq!(
        Place::parse("sb_1:/tmp/x"),
        Place::Remote {
            id: "sb_1".into(),
            path: "/tmp/x".into()
        }
    );
    assert_eq!(Place::parse("./a:/b"), Place::Local("./a:/b".into()));
    assert_eq!(Place::parse("sb_1:rel"), Place::Local("sb_1:rel".into()));
    assert_eq!(Place::parse("-"), Place::Local("-".into()));
    assert_eq!(Place::parse(":/x"), Place::Local(":/x".into()));
}

#[test]
fn names_for_copies_into_directories() {
    assert_eq!(base_name("/a/b.txt").unwrap(), "b.txt");
    assert_eq!(base_name("/a/dir/").unwrap(), "dir");
    assert!(base_name("/").is_err());
    assert_eq!(join_remote("/tmp/", "x"), "/tmp/x");
}

#[test]
fn a_directory_tar_holds_its_contents_relative_to_it() {
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("sub")).unwrap();
    std::fs::write(src.path().join("sub/f.txt"), b"hello").unwrap();
    std::os::unix::fs::symlink("sub/f.txt", src.path().join("link")).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    append_contents(&mut tar, src.path()).unwrap();
    let bytes = tar.into_inner().unwrap();

    let dest = tempfile::tempdir().unwrap();
    tar::Archive::new(&bytes[..]).unpack(dest.path()).unwrap();
    assert_eq!(
        std::fs::read(dest.path().join("sub/f.txt")).unwrap(),
        b"hello"
    );
    assert_eq!(
        std::fs::read_link(dest.path().join("link")).unwrap(),
        Path::new("sub/f.txt")
    );
    let names: Vec<String> = tar::Archive::new(&bytes[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with('/') && !n.starts_with("./")),
        "{names:?}"
    );
}

#[test]
fn an_archive_from_the_guest_cannot_write_outside_the_target() {
    let mut header = tar::Header::new_gnu();
    header.set_size(4);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    // `set_path` refuses `..`: write the name bytes directly.
    header.as_old_mut().name[..9].copy_from_slice(b"../escape");
    header.set_cksum();
    let mut tar = tar::Builder::new(Vec::new());
    tar.append(&header, &b"evil"[..]).unwrap();
    let bytes = tar.into_inner().unwrap();

    let outer = tempfile::tempdir().unwrap();
    let dest = outer.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let _ = tar::Archive::new(&bytes[..]).unpack(&dest);
    assert!(!outer.path().join("escape").exists());
}

/// An in-memory stand-in for a sandbox's files routes: files keep their
/// bytes and mode, directories the tar they were uploaded as.
mod stub {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::extract::{Query, State};
    use axum::http::{HeaderMap, Method, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use axum::Router;

    #[derive(Clone)]
    pub enum Node {
        File { bytes: Bytes, mode: String },
        Dir { tar: Bytes },
    }

    pub type Files = Arc<Mutex<HashMap<String, Node>>>;

    async fn files(
        State(files): State<Files>,
        method: Method,
        Query(q): Query<HashMap<String, String>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let path = q["path"].clone();
        if method == Method::PUT {
            let tar = headers
                .get("content-type")
                .is_some_and(|v| v == "application/x-tar");
            let node = if tar {
                // As the daemon does: mkdir and mode are for single files.
                if q.contains_key("mkdir") || q.contains_key("mode") {
                    let error =
                        serde_json::json!({"error": "mode and mkdir apply to a file upload"});
                    return (StatusCode::BAD_REQUEST, axum::Json(error)).into_response();
                }
                Node::Dir { tar: body.clone() }
            } else {
                let mode = q.get("mode").cloned().unwrap_or_else(|| "0644".into());
                Node::File {
                    bytes: body.clone(),
                    mode,
                }
            };
            files.lock().unwrap().insert(path.clone(), node);
            let answer = serde_json::json!({"path": path, "bytes": body.len()});
            return (StatusCode::CREATED, axum::Json(answer)).into_response();
        }
        let Some(node) = files.lock().unwrap().get(&path).cloned() else {
            let error = serde_json::json!({"error": "no such file"});
            return (StatusCode::NOT_FOUND, axum::Json(error)).into_response();
        };
        match node {
            Node::File { bytes, mode } => (
                [
                    ("x-emberd-kind", "file".to_owned()),
                    ("x-emberd-mode", mode),
                ],
                bytes,
            )
                .into_response(),
            Node::Dir { tar } => {
                let body = if q.get("format").map(String::as_str) == Some("tar") {
                    tar
                } else {
                    Bytes::new()
                };
                ([("x-emberd-kind", "dir"), ("x-emberd-mode", "0755")], body).into_response()
            }
        }
    }

    /// A client of a new stub, and the stub's files.
    pub async fn serve() -> (emberd_client::Client, Files) {
        let state = Files::default();
        let app = Router::new()
            .route("/sandboxes/{id}/files", get(files).put(files).head(files))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (
            emberd_client::Client::new(&addr.to_string()).unwrap(),
            state,
        )
    }
}

fn args(source: &str, destination: &str) -> CpArgs {
    CpArgs {
        source: source.into(),
        destination: destination.into(),
        parents: false,
        user: None,
    }
}

#[tokio::test]
async fn a_directory_goes_up_and_comes_back_whole() {
    let (client, files) = stub::serve().await;
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("sub/empty")).unwrap();
    std::fs::write(src.path().join("sub/f.txt"), b"hello").unwrap();
    // Bigger than the pipe between tar and connection, many times over.
    let big: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i * 7 % 253) as u8)
        .collect();
    std::fs::write(src.path().join("big.bin"), &big).unwrap();
    std::os::unix::fs::symlink("sub/f.txt", src.path().join("link")).unwrap();

    let source = src.path().display().to_string();
    // `-p` is for files: a directory upload must not pass it on.
    let upload = CpArgs {
        parents: true,
        ..args(&source, "sb_1:/work/tree")
    };
    cp(&client, upload).await.unwrap();
    assert!(matches!(
        files.lock().unwrap().get("/work/tree"),
        Some(stub::Node::Dir { .. })
    ));

    let dest = tempfile::tempdir().unwrap();
    let out = dest.path().join("out");
    cp(&client, args("sb_1:/work/tree", &out.display().to_string()))
        .await
        .unwrap();
    assert_eq!(std::fs::read(out.join("sub/f.txt")).unwrap(), b"hello");
    assert_eq!(std::fs::read(out.join("big.bin")).unwrap(), big);
    assert!(out.join("sub/empty").is_dir());
    assert_eq!(
        std::fs::read_link(out.join("link")).unwrap(),
        Path::new("sub/f.txt")
    );

    // Into an existing local directory: under the source's name.
    cp(
        &client,
        args("sb_1:/work/tree", &dest.path().display().to_string()),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(dest.path().join("tree/sub/f.txt")).unwrap(),
        b"hello"
    );
}

#[tokio::test]
async fn a_file_keeps_its_bytes_and_mode_and_lands_inside_directories() {
    use std::os::unix::fs::PermissionsExt as _;
    let (client, files) = stub::serve().await;
    files.lock().unwrap().insert(
        "/home".into(),
        stub::Node::Dir {
            tar: Default::default(),
        },
    );
    let src = tempfile::tempdir().unwrap();
    let script = src.path().join("run.sh");
    std::fs::write(&script, b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o750)).unwrap();

    cp(&client, args(&script.display().to_string(), "sb_1:/home"))
        .await
        .unwrap();
    match files.lock().unwrap().get("/home/run.sh") {
        Some(stub::Node::File { bytes, mode }) => {
            assert_eq!(&bytes[..], b"#!/bin/sh\necho hi\n");
            assert_eq!(mode, "0750");
        }
        _ => panic!("the file did not land in /home under its own name"),
    }

    let dest = tempfile::tempdir().unwrap();
    cp(
        &client,
        args("sb_1:/home/run.sh", &dest.path().display().to_string()),
    )
    .await
    .unwrap();
    let copy = dest.path().join("run.sh");
    assert_eq!(std::fs::read(&copy).unwrap(), b"#!/bin/sh\necho hi\n");
    assert_eq!(
        std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
        0o750
    );

    let err = cp(
        &client,
        args("sb_1:/nope", &dest.path().display().to_string()),
    )
    .await
    .unwrap_err();
    // The HEAD's 404 has no body: the daemon's words come from a GET.
    assert_eq!(err.to_string(), "no such file");
}
