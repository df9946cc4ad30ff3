//! The `Files` service: streaming in bounded memory, and hostile requests.

use std::path::Path;

use emberd_proto::v1::{
    write_file_request, MakeDirRequest, PathRequest, ReadFileRequest, RemoveRequest,
    WriteFileRequest, WriteFileStart,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::{run, sh, Agent};

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_100_mib_file_streams_both_ways_in_bounded_memory() {
    let agent = Agent::start();
    let mut files = agent.files().await;
    const SIZE: usize = 100 * 1024 * 1024;
    const CHUNK: usize = 256 * 1024;
    let (tx, rx) = mpsc::channel(4);
    let writer = tokio::spawn(async move {
        let mut hash = Sha256::new();
        tx.send(WriteFileRequest {
            kind: Some(write_file_request::Kind::Start(WriteFileStart {
                path: "/data/big.bin".into(),
                mode: 0o600,
                make_parents: true,
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let mut sent = 0usize;
        let mut counter = 0u8;
        while sent < SIZE {
            let chunk: Vec<u8> = (0..CHUNK)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(counter))
                .collect();
            counter = counter.wrapping_add(1);
            hash.update(&chunk);
            sent += chunk.len();
            tx.send(WriteFileRequest {
                kind: Some(write_file_request::Kind::Data(chunk)),
            })
            .await
            .unwrap();
        }
        hash.finalize().to_vec()
    });
    let written = files
        .write_file(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let expected = writer.await.unwrap();
    assert_eq!(written.bytes_written, SIZE as u64);
    let on_disk = agent.root.path().join("data/big.bin");
    assert_eq!(std::fs::metadata(&on_disk).unwrap().len(), SIZE as u64);
    // No temporary file is left beside it.
    assert_eq!(
        std::fs::read_dir(agent.root.path().join("data"))
            .unwrap()
            .count(),
        1
    );

    let mut stream = files
        .read_file(ReadFileRequest {
            path: "/data/big.bin".into(),
            offset: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut hash = Sha256::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.message().await.unwrap() {
        total += chunk.data.len();
        hash.update(&chunk.data);
    }
    assert_eq!(total, SIZE);
    assert_eq!(hash.finalize().to_vec(), expected);
    let peak = rss_kib(agent.pid(), "VmHWM:");
    assert!(
        peak < 40 * 1024,
        "agent peak RSS {peak} KiB for a 100 MiB file"
    );
}

#[tokio::test]
async fn hostile_paths_and_bad_requests_get_errors_and_the_agent_keeps_serving() {
    let agent = Agent::start();
    let mut files = agent.files().await;
    for path in [
        "../../etc/passwd",
        "relative/path",
        "/a/../../etc/passwd",
        "/nul\0byte",
        "",
    ] {
        let err = files
            .stat(PathRequest {
                path: path.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{path:?}: {err:?}"
        );
    }
    let err = files
        .read_file(ReadFileRequest {
            path: "/../../../etc/shadow".into(),
            ..ReadFileRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = files
        .stat(PathRequest {
            path: "/missing".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = files
        .remove(RemoveRequest {
            path: "/".into(),
            recursive: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // A write whose first message is not `start`.
    let (tx, rx) = mpsc::channel(2);
    tx.send(WriteFileRequest {
        kind: Some(write_file_request::Kind::Data(b"x".to_vec())),
    })
    .await
    .unwrap();
    drop(tx);
    let err = files.write_file(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Still serving: directories, listing, exec.
    files
        .make_dir(MakeDirRequest {
            path: "/work/a/b".into(),
            parents: true,
            mode: 0,
            ..Default::default()
        })
        .await
        .unwrap();
    let listing = files
        .list_dir(PathRequest {
            path: "/work".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listing.entries.len(), 1);
    assert_eq!(listing.entries[0].name, "a");
    files
        .remove(RemoveRequest {
            path: "/work".into(),
            recursive: true,
        })
        .await
        .unwrap();
    assert!(!Path::new(&agent.root.path().join("work")).exists());
    let mut client = agent.agent().await;
    let out = run(&mut client, sh("echo alive")).await;
    assert_eq!(out.stdout, b"alive\n");
}
