//! What the files API reads, lists and makes: only regular files read
//! (within offset and limit), listings by depth and bounded in count,
//! symlinks never followed, owners checked.

use emberd_proto::boundary::{MAX_LIST_DEPTH, MAX_LIST_ENTRIES, MAX_PATH_BYTES};
use emberd_proto::v1::files_client::FilesClient;
use emberd_proto::v1::{
    write_file_request, FileKind, MakeDirRequest, PathRequest, ReadFileRequest, WriteFileRequest,
    WriteFileStart,
};
use tonic::transport::Channel;

use crate::support::Agent;

async fn read(
    files: &mut FilesClient<Channel>,
    path: &str,
    offset: u64,
    limit: u64,
) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = files
        .read_file(ReadFileRequest {
            path: path.into(),
            offset,
            limit,
        })
        .await?
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.message().await? {
        data.extend(chunk.data);
    }
    Ok(data)
}

fn path(path: &str, depth: u32) -> PathRequest {
    PathRequest {
        path: path.into(),
        depth,
    }
}

#[tokio::test]
async fn only_regular_files_are_read_within_offset_and_limit() {
    let agent = Agent::start();
    let root = agent.root.path();
    std::fs::write(root.join("digits"), "0123456789").unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    // Followed like any path: it names the real /dev/zero.
    std::os::unix::fs::symlink("/dev/zero", root.join("zero")).unwrap();
    std::fs::create_dir(root.join("dir")).unwrap();
    let mut files = agent.files().await;

    assert_eq!(
        read(&mut files, "/digits", 0, 0).await.unwrap(),
        b"0123456789"
    );
    assert_eq!(read(&mut files, "/digits", 2, 5).await.unwrap(), b"23456");
    assert_eq!(read(&mut files, "/digits", 8, 100).await.unwrap(), b"89");
    for (name, says) in [
        ("/fifo", "is not a regular file"),
        ("/zero", "is not a regular file"),
        ("/dir", "is a directory"),
    ] {
        let err = read(&mut files, name, 0, 0).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{name}");
        assert!(err.message().contains(says), "{name}: {}", err.message());
    }
    let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
    let err = read(&mut files, &long, 0, 0).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn listings_go_down_to_the_depth_asked_and_never_follow_symlinks() {
    let agent = Agent::start();
    let root = agent.root.path();
    std::fs::create_dir_all(root.join("t/a/b/c")).unwrap();
    std::fs::write(root.join("t/top.txt"), "x").unwrap();
    std::fs::write(root.join("t/a/b/c/deep.txt"), "x").unwrap();
    std::os::unix::fs::symlink("a", root.join("t/link")).unwrap();
    let mut files = agent.files().await;
    let list = |depth| path("/t", depth);
    let names = |r: emberd_proto::v1::ListDirResponse| {
        assert!(!r.truncated);
        r.entries.into_iter().map(|e| e.path).collect::<Vec<_>>()
    };
    for depth in [0, 1] {
        let listing = files.list_dir(list(depth)).await.unwrap().into_inner();
        let link = listing.entries.iter().find(|e| e.name == "link").unwrap();
        assert_eq!(link.kind, FileKind::Symlink as i32);
        assert_eq!(link.link_target, "a");
        assert_eq!(names(listing), ["/t/a", "/t/link", "/t/top.txt"]);
    }
    let listing = files.list_dir(list(3)).await.unwrap().into_inner();
    assert_eq!(
        names(listing),
        ["/t/a", "/t/a/b", "/t/a/b/c", "/t/link", "/t/top.txt"]
    );
    let listing = files
        .list_dir(list(MAX_LIST_DEPTH))
        .await
        .unwrap()
        .into_inner();
    assert!(names(listing).contains(&"/t/a/b/c/deep.txt".to_owned()));
    let err = files.list_dir(list(MAX_LIST_DEPTH + 1)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Stat does not follow a final symlink either.
    let info = files.stat(path("/t/link", 0)).await.unwrap().into_inner();
    assert_eq!(info.kind, FileKind::Symlink as i32);
    assert_eq!(info.link_target, "a");
}

#[tokio::test]
async fn a_listing_stops_at_the_entry_cap_and_says_so() {
    let agent = Agent::start();
    let many = agent.root.path().join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..MAX_LIST_ENTRIES + 5 {
        std::fs::File::create(many.join(format!("f{i}"))).unwrap();
    }
    let mut files = agent.files().await;
    let listing = files.list_dir(path("/many", 1)).await.unwrap().into_inner();
    assert!(listing.truncated);
    assert_eq!(listing.entries.len(), MAX_LIST_ENTRIES);
}

#[tokio::test]
async fn an_unknown_owner_is_refused_and_nothing_is_made() {
    let agent = Agent::start();
    let mut files = agent.files().await;
    let err = files
        .make_dir(MakeDirRequest {
            path: "/made/deep".into(),
            parents: true,
            mode: 0,
            owner: "bogus".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let start = WriteFileStart {
        path: "/made/file".into(),
        make_parents: true,
        owner: "bogus".into(),
        ..Default::default()
    };
    let request = futures::stream::iter([WriteFileRequest {
        kind: Some(write_file_request::Kind::Start(start)),
    }]);
    let err = files.write_file(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(!agent.root.path().join("made").exists());

    // The known owners are accepted (a host agent changes no owners).
    for owner in ["", "sandbox", "root"] {
        files
            .make_dir(MakeDirRequest {
                path: format!("/made/{owner}x"),
                parents: true,
                mode: 0o700,
                owner: owner.into(),
            })
            .await
            .unwrap();
    }
    assert!(agent.root.path().join("made/rootx").is_dir());
}
