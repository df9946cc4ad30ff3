//! The fake itself is as strict as Firecracker: it refuses the instance
//! ids, request bodies and state transitions that Firecracker refuses.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{json, Value};

use crate::support::{fake_bin, temp_root};

#[test]
fn the_fake_refuses_instance_ids_firecracker_refuses() {
    let root = tempfile::tempdir().unwrap();
    let output = Command::new(fake_bin())
        .args(["--api-sock", "fc.sock", "--id", "sb_a1b2c3d4e5f6"])
        .current_dir(root.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("InvalidChar('_', 2)"), "{stderr}");
    assert!(!root.path().join("fc.sock").exists());
}

#[tokio::test]
async fn the_fake_rejects_what_firecracker_rejects() {
    let root = temp_root("fcr");
    let mut fake = Command::new(fake_bin())
        .args(["--api-sock", "fc.sock", "--id", "strict"])
        .current_dir(root.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let api = emberd::vmm::firecracker::FirecrackerApi::new(&root.path().join("fc.sock"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !root.path().join("fc.sock").exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    for (method, path, body, expected) in [
        (
            Method::PUT,
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false, "bogus": 1}),
            "unknown field",
        ),
        (
            Method::PUT,
            "/boot-source",
            json!({"boot_args": "x"}),
            "kernel_image_path",
        ),
        (
            Method::PUT,
            "/actions",
            json!({"action_type": "InstanceStart"}),
            "kernel",
        ),
        (
            Method::PATCH,
            "/vm",
            json!({"state": "Paused"}),
            "before starting",
        ),
        (
            Method::PUT,
            "/drives/a",
            json!({"drive_id": "b", "is_root_device": false, "path_on_host": "/etc/hostname"}),
            "does not match",
        ),
        (Method::GET, "/nowhere", Value::Null, "Invalid request URI"),
    ] {
        let body = (!body.is_null()).then_some(body);
        let err = api
            .call(method.clone(), path, body)
            .await
            .err()
            .unwrap_or_else(|| panic!("{method} {path} accepted"));
        assert!(err.to_string().contains(expected), "{method} {path}: {err}");
    }
    let info = api.call(Method::GET, "/", None).await.unwrap();
    assert_eq!(info["state"], "Not started");

    // State rules around InstanceStart (the kernel must be an ELF image).
    let kernel = fake_bin();
    let file = kernel.to_str().unwrap();
    let ok = [
        (
            Method::PUT,
            "/boot-source",
            json!({"kernel_image_path": file, "boot_args": "console=ttyS0"}),
        ),
        (
            Method::PUT,
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": 128}),
        ),
        (
            Method::PUT,
            "/vsock",
            json!({"guest_cid": 3, "uds_path": "v.sock"}),
        ),
    ];
    for (method, path, body) in ok {
        api.call(method, path, Some(body)).await.unwrap();
    }
    let load = json!({"snapshot_path": "/nonexistent", "mem_file_path": "/nonexistent"});
    let err = api
        .call(Method::PUT, "/snapshot/load", Some(load))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("after configuring"), "{err}");
    api.call(
        Method::PUT,
        "/actions",
        Some(json!({"action_type": "InstanceStart"})),
    )
    .await
    .unwrap();
    assert_eq!(
        api.call(Method::GET, "/", None).await.unwrap()["state"],
        "Running"
    );
    for (method, path, body, expected) in [
        (
            Method::PUT,
            "/machine-config",
            json!({"vcpu_count": 2, "mem_size_mib": 128}),
            "not supported after starting",
        ),
        (
            Method::PUT,
            "/boot-source",
            json!({"kernel_image_path": file}),
            "not supported after starting",
        ),
        (
            Method::PUT,
            "/actions",
            json!({"action_type": "InstanceStart"}),
            "not supported after starting",
        ),
        (
            Method::PUT,
            "/snapshot/create",
            json!({"snapshot_path": "s", "mem_file_path": "m"}),
            "must be paused",
        ),
        (
            Method::PATCH,
            "/vm",
            json!({"state": "Frozen"}),
            "unknown variant",
        ),
    ] {
        let err = api
            .call(method.clone(), path, Some(body))
            .await
            .err()
            .unwrap_or_else(|| panic!("{method} {path} accepted after start"));
        assert!(err.to_string().contains(expected), "{method} {path}: {err}");
    }
    let _ = fake.kill();
    let _ = fake.wait();
}
