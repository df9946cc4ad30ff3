//! A template Firecracker refuses (here: taken on another CPU) is tried
//! once: the restore fails, the process ends naming the cause in its log,
//! the pack cold-boots from then on, and the template is neither restored
//! again nor rebuilt: no loop.

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::{start, Http};
use crate::support::{data_dir, temp_root};

fn snapshot_calls(record: &std::path::Path) -> (usize, usize) {
    let text = std::fs::read_to_string(record).unwrap_or_default();
    let calls: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = |path: &str| calls.iter().filter(|c| c["path"] == path).count();
    (count("/snapshot/load"), count("/snapshot/create"))
}

#[tokio::test]
async fn a_template_the_vmm_refuses_is_tried_once_and_never_rebuilt() {
    let root = temp_root("fcg");
    let data = root.path().join("data");
    emberd_harness::share_images(&data_dir(), &data).unwrap();
    let args = ["--pool-size", "0", "--snapshots", "true", "--skip-warm"];

    // A template of the shell pack, taken on "cpu A".
    let first_record = root.path().join("first.jsonl");
    let first = start(
        &data,
        &args,
        &[
            ("FAKE_FC_CPU", OsStr::new("cpu A")),
            ("FAKE_FC_RECORD", first_record.as_os_str()),
        ],
    );
    let http = Http::of(&first);
    let (status, created) = http
        .post("/sandboxes", r#"{"language_pack":"shell"}"#)
        .await;
    assert_eq!(status, 201, "{created}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let published = || {
        std::fs::read_dir(data.join("snapshots"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("shell-"))
    };
    while !published() {
        assert!(Instant::now() < deadline, "no template was built");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(first);

    // The same host to the daemon, another CPU to Firecracker.
    let record = root.path().join("second.jsonl");
    let second = start(
        &data,
        &args,
        &[
            ("FAKE_FC_CPU", OsStr::new("cpu B")),
            ("FAKE_FC_RECORD", record.as_os_str()),
        ],
    );
    let http = Http::of(&second);
    for _ in 0..3 {
        let (status, created) = http
            .post("/sandboxes", r#"{"language_pack":"shell"}"#)
            .await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap();
        let info = http.get(&format!("/sandboxes/{id}")).await;
        assert_eq!(info["boot_path"], "cold-boot", "{info}");
        let (status, out) = http
            .post(&format!("/sandboxes/{id}/exec"), r#"{"code":"echo ok"}"#)
            .await;
        assert_eq!(
            (status, out["stdout"].as_str()),
            (200, Some("ok\n")),
            "{out}"
        );
    }
    // Give a rebuild, were one requested, the time to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        snapshot_calls(&record),
        (1, 0),
        "restores and rebuilds after the refusal"
    );
    let log = second.log_text();
    assert!(
        log.contains("another CPU"),
        "the cause is not in the log: {log}"
    );
    assert!(
        log.contains("cold-boots until the daemon restarts"),
        "{log}"
    );
}
