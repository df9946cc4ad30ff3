//! `WriteTar` and `ReadTar`: a round trip keeps names, modes and symlinks;
//! hostile archives are refused with nothing written outside the directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use emberd_proto::v1::files_client::FilesClient;
use emberd_proto::v1::{write_tar_request, PathRequest, WriteTarRequest, WriteTarStart};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::support::Agent;

/// Sends `archive` in small chunks to be unpacked under `path`.
pub async fn write_tar(
    files: &mut FilesClient<Channel>,
    path: &str,
    owner: &str,
    archive: Vec<u8>,
) -> Result<emberd_proto::v1::WriteTarResponse, tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    let start = WriteTarStart {
        path: path.into(),
        owner: owner.into(),
    };
    tokio::spawn(async move {
        let _ = tx
            .send(WriteTarRequest {
                kind: Some(write_tar_request::Kind::Start(start)),
            })
            .await;
        for chunk in archive.chunks(1000) {
            let message = WriteTarRequest {
                kind: Some(write_tar_request::Kind::Data(chunk.to_vec())),
            };
            if tx.send(message).await.is_err() {
                return;
            }
        }
    });
    files
        .write_tar(ReceiverStream::new(rx))
        .await
        .map(|r| r.into_inner())
}

async fn read_tar(files: &mut FilesClient<Channel>, path: &str) -> Vec<u8> {
    let mut stream = files
        .read_tar(PathRequest {
            path: path.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut archive = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        archive.extend(chunk.data);
    }
    archive
}

/// Every entry under `dir`: relative name, mode, symlink target or content.
fn tree(dir: &Path) -> Vec<(PathBuf, u32, String)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(dir.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let rel = rel.join(entry.file_name());
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(entry.path()).unwrap().display())
            } else if meta.is_dir() {
                stack.push(rel.clone());
                "dir".to_owned()
            } else {
                String::from_utf8(std::fs::read(entry.path()).unwrap()).unwrap()
            };
            let mode = if meta.file_type().is_symlink() {
                0
            } else {
                meta.permissions().mode() & 0o7777
            };
            out.push((rel, mode, what));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_tree_survives_a_tar_round_trip_with_modes_and_symlinks() {
    let agent = Agent::start();
    let src = agent.root.path().join("src");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    for (name, mode) in [
        ("plain.txt", 0o644),
        ("run.sh", 0o755),
        ("secret", 0o600),
        ("sub/deeper/note", 0o640),
    ] {
        std::fs::write(src.join(name), format!("content of {name}")).unwrap();
        std::fs::set_permissions(src.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::set_permissions(src.join("sub"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("sub/deeper/note", src.join("link")).unwrap();
    // A link out of the tree is packed as a link, not followed.
    std::os::unix::fs::symlink("/etc/hostname", src.join("outside")).unwrap();

    let mut files = agent.files().await;
    let archive = read_tar(&mut files, "/src").await;
    let mut kinds = Vec::new();
    for entry in tar::Archive::new(&archive[..]).entries().unwrap() {
        let entry = entry.unwrap();
        let mode = entry.header().mode().unwrap();
        assert_eq!(
            mode & !0o7777,
            0,
            "mode {mode:o} carries more than permissions"
        );
        kinds.push((
            entry.path().unwrap().display().to_string(),
            entry.header().entry_type(),
        ));
    }
    assert!(
        kinds.contains(&("link".into(), tar::EntryType::Symlink)),
        "{kinds:?}"
    );
    assert!(kinds.contains(&("outside".into(), tar::EntryType::Symlink)));

    // Unpacked into a directory that does not exist yet.
    let response = write_tar(&mut files, "/dst/nested", "sandbox", archive)
        .await
        .unwrap();
    assert_eq!(response.entries, kinds.len() as u64);
    assert!(response.bytes_written > 0);
    let dst = agent.root.path().join("dst/nested");
    let (before, after) = (tree(&src), tree(&dst));
    assert_eq!(before, after);
    assert!(after
        .iter()
        .any(|(name, mode, _)| name == Path::new("run.sh") && *mode == 0o755));

    // One file packs under its own name.
    let one = read_tar(&mut files, "/src/run.sh").await;
    let mut entries = tar::Archive::new(&one[..]);
    let names: Vec<String> = entries
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["run.sh"]);
}

/// An archive of one regular file whose raw name is `name` (as a hostile
/// packer writes it: the `tar` crate would refuse it).
fn raw_entry(builder: &mut tar::Builder<Vec<u8>>, name: &[u8], kind: tar::EntryType, link: &str) {
    let mut header = tar::Header::new_gnu();
    header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    header.set_entry_type(kind);
    header.set_mode(0o644);
    if !link.is_empty() {
        header.set_link_name(link).unwrap();
    }
    let data: &[u8] = if kind == tar::EntryType::Regular {
        b"pwned"
    } else {
        b""
    };
    header.set_size(data.len() as u64);
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

/// A raw entry: name, kind, link target.
type Raw = (Vec<u8>, tar::EntryType, String);

#[tokio::test]
async fn hostile_archives_are_refused_and_nothing_lands_outside() {
    let agent = Agent::start();
    let mut files = agent.files().await;
    let outside = tempfile::tempdir().unwrap();
    let escape_name = format!("{}/abs.txt", outside.path().display());
    let cases: Vec<(&str, Vec<Raw>)> = vec![
        (
            "parent",
            vec![(
                b"../escape".to_vec(),
                tar::EntryType::Regular,
                String::new(),
            )],
        ),
        (
            "absolute",
            vec![(
                escape_name.clone().into_bytes(),
                tar::EntryType::Regular,
                String::new(),
            )],
        ),
        (
            "through a symlink",
            vec![
                (
                    b"out".to_vec(),
                    tar::EntryType::Symlink,
                    outside.path().display().to_string(),
                ),
                (
                    b"out/planted".to_vec(),
                    tar::EntryType::Regular,
                    String::new(),
                ),
            ],
        ),
        (
            "hard link",
            vec![(b"hard".to_vec(), tar::EntryType::Link, "/etc/passwd".into())],
        ),
        (
            "device",
            vec![(b"dev".to_vec(), tar::EntryType::Char, String::new())],
        ),
    ];
    for (what, entries) in cases {
        let mut builder = tar::Builder::new(Vec::new());
        raw_entry(&mut builder, b"fine.txt", tar::EntryType::Regular, "");
        for (name, kind, link) in &entries {
            raw_entry(&mut builder, name, *kind, link);
        }
        let archive = builder.into_inner().unwrap();
        let err = write_tar(&mut files, "/in", "", archive).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().contains("refused"),
            "{what}: {}",
            err.message()
        );
    }
    assert!(!agent.root.path().join("escape").exists());
    assert!(!agent.root.path().parent().unwrap().join("escape").exists());
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    // What came before a refused entry was unpacked, inside.
    assert!(agent.root.path().join("in/fine.txt").is_file());

    let err = write_tar(&mut files, "/in", "bogus", Vec::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}
