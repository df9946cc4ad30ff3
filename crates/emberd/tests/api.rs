//! The HTTP API through `api::app()` (no socket) over the fake VM backend:
//! the shape of every route's answer, the status of every refusal, and the
//! exec contract (output caps, non-UTF-8 output, timeouts, signal deaths),
//! and the bounds every request meets (a 404 before the body is read, the
//! concurrency limit).

mod fixture;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use fixture::{wait_until, wait_until_async, Daemon};
use serde_json::{json, Value};

/// The daemon's per-stream cap on the output an exec returns.
const OUTPUT_CAP: usize = 4 * 1024 * 1024;
/// The largest exec body the daemon reads.
const EXEC_BODY_LIMIT: usize = 16 * 1024 * 1024;

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, message: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(keys(body), ["error"], "{body}");
    assert_eq!(body["error"], message);
}

fn is_sandbox_id(id: &str) -> bool {
    id.strip_prefix("sb_").is_some_and(|hex| {
        hex.len() == 12 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

#[tokio::test]
async fn every_route_answers_with_its_shape() {
    let daemon = Daemon::start();

    let (status, body) = daemon.call(Method::GET, "/healthz", None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "status": "ok" })));

    let info = daemon.info().await;
    assert_eq!(
        keys(&info),
        [
            "backend",
            "boot_path",
            "guest_ram_mib",
            "guest_vcpus",
            "packs",
            "sandboxes_reaped",
            "version",
            "work_dir"
        ]
    );
    assert_eq!(info["sandboxes_reaped"], 0);
    assert_eq!(info["guest_ram_mib"], 256);
    assert_eq!(info["guest_vcpus"], 1);
    assert_eq!(info["boot_path"], "cold-boot");
    assert_eq!(info["packs"], json!(["python", "shell"]));
    assert_eq!(info["backend"], "fake");
    assert_eq!(info["work_dir"], daemon.work_dir.display().to_string());

    // An empty body asks for the default pack.
    let (status, created) = daemon.call(Method::POST, "/sandboxes", None).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(keys(&created), ["id"]);
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(is_sandbox_id(&id), "{id}");
    let shell = daemon.create("shell").await;

    let (status, list) = daemon.call(Method::GET, "/sandboxes", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys(&list), ["sandboxes"]);
    let listed = list["sandboxes"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    for entry in listed {
        assert_eq!(
            keys(entry),
            [
                "backend",
                "boot_path",
                "created_at",
                "disk_mib",
                "id",
                "idle_expires_at",
                "memory_mib",
                "pack",
                "state",
                "vcpus",
                "vmm_pid"
            ]
        );
        assert_eq!(entry["state"], "running");
        assert_eq!(entry["backend"], "fake");
        assert_eq!(entry["boot_path"], "cold-boot");
        let created_at = entry["created_at"].as_str().unwrap();
        humantime::parse_rfc3339(created_at).unwrap();
    }
    let packs: Vec<(&str, &str)> = listed
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), e["pack"].as_str().unwrap()))
        .collect();
    assert!(packs.contains(&(id.as_str(), "python")), "{packs:?}");
    assert!(packs.contains(&(shell.as_str(), "shell")), "{packs:?}");

    let one = daemon.sandbox(&id).await;
    assert_eq!(
        keys(&one),
        [
            "backend",
            "boot_path",
            "console_tail",
            "created_at",
            "disk_mib",
            "id",
            "idle_expires_at",
            "memory_mib",
            "pack",
            "state",
            "vcpus",
            "vmm_pid"
        ]
    );
    assert!(
        one["console_tail"]
            .as_str()
            .unwrap()
            .contains("emberd-init: ready"),
        "{one}"
    );

    let (status, result) = daemon
        .exec(
            &id,
            json!({ "code": "cat\nstderr:warning\nexit:3", "stdin": "abc" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "a non-zero exit is still a 200");
    assert_eq!(
        keys(&result),
        [
            "duration_ms",
            "duration_us",
            "exit_code",
            "stderr",
            "stdout",
            "vm_duration_us"
        ]
    );
    assert_eq!(result["stdout"], "abc");
    assert_eq!(result["stderr"], "warning\n");
    assert_eq!(result["exit_code"], 3);

    let (status, body) = daemon
        .call_raw(Method::DELETE, &format!("/sandboxes/{id}"), Body::empty())
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(body.is_empty());
    let (status, body) = daemon
        .call(Method::GET, &format!("/sandboxes/{id}"), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "sandbox not found");
    daemon.stop().await;
}

#[tokio::test]
async fn bad_requests_are_400() {
    let daemon = Daemon::start();
    let create = |body: &'static str| daemon.call_raw(Method::POST, "/sandboxes", Body::from(body));
    let json_of = |bytes: Vec<u8>| serde_json::from_slice::<Value>(&bytes).unwrap();

    let (status, body) = create("{nope").await;
    let body = json_of(body);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with("invalid JSON"),
        "{body}"
    );

    let (status, body) = create(r#"{"language_pack":"ruby"}"#).await;
    assert_error(
        status,
        &json_of(body),
        StatusCode::BAD_REQUEST,
        r#"unknown language pack: "ruby""#,
    );

    let (status, body) = create(r#"{"langauge_pack":"python"}"#).await;
    let body = json_of(body);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("unknown field"),
        "{body}"
    );
    assert_eq!(
        daemon.backend.boots_started(),
        0,
        "nothing booted for a bad request"
    );

    let id = daemon.create("python").await;
    let uri = format!("/sandboxes/{id}/exec");
    for bad in [
        "{nope",
        r#"{"code":"echo:x","cod":"y"}"#,
        r#"{"stdin":"no code"}"#,
        r#"{"code":"echo:x","timeout_ms":-1}"#,
    ] {
        let (status, body) = daemon.call_raw(Method::POST, &uri, Body::from(bad)).await;
        let body = json_of(body);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(
            body["error"].as_str().unwrap().starts_with("invalid JSON"),
            "{body}"
        );
    }
    let (status, body) = daemon
        .exec(&id, json!({ "code": "echo:x", "timeout_ms": 3_600_001 }))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid request: timeout_ms must be at most 3600000",
    );
    let at_most = daemon
        .exec(&id, json!({ "code": "echo:x", "timeout_ms": 3_600_000 }))
        .await;
    assert_eq!(at_most.0, StatusCode::OK, "{}", at_most.1);
    daemon.stop().await;
}

#[tokio::test]
async fn unknown_sandboxes_are_404_whatever_the_body() {
    let daemon = Daemon::start();
    for id in ["sb_000000000000", "nope"] {
        let (status, body) = daemon
            .call(Method::GET, &format!("/sandboxes/{id}"), None)
            .await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "sandbox not found");
        let (status, body) = daemon
            .call(Method::DELETE, &format!("/sandboxes/{id}"), None)
            .await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "sandbox not found");
        let (status, body) = daemon.exec(id, json!({ "code": "echo:x" })).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "sandbox not found");
    }
    // Neither the size nor the content of the body matters for an unknown id.
    let huge = vec![b'x'; EXEC_BODY_LIMIT + 1024];
    let (status, body) = daemon
        .call_raw(
            Method::POST,
            "/sandboxes/sb_000000000000/exec",
            Body::from(huge),
        )
        .await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_error(status, &body, StatusCode::NOT_FOUND, "sandbox not found");

    // The 404 comes before a byte of the body is read: a body that never
    // ends does not delay it.
    let endless = Body::from_stream(futures::stream::pending::<Result<Vec<u8>, std::io::Error>>());
    let answer = daemon.call_raw(Method::POST, "/sandboxes/sb_000000000000/exec", endless);
    let (status, body) = tokio::time::timeout(fixture::BOUND, answer)
        .await
        .expect("the 404 waited for the body");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_error(status, &body, StatusCode::NOT_FOUND, "sandbox not found");
    daemon.stop().await;
}

#[tokio::test]
async fn exec_while_booting_is_409() {
    let daemon = Daemon::start();
    daemon.backend.hold_boots(true);
    let create = tokio::spawn(fixture::call(
        daemon.app.clone(),
        Method::POST,
        "/sandboxes",
        None,
    ));
    wait_until("the boot is under way", || {
        daemon.backend.boots_waiting() == 1
    })
    .await;
    let ids = daemon.listed_ids().await;
    assert_eq!(ids.len(), 1);
    assert_eq!(daemon.sandbox(&ids[0]).await["state"], "booting");
    let (status, body) = daemon.exec(&ids[0], json!({ "code": "echo:x" })).await;
    assert_error(
        status,
        &body,
        StatusCode::CONFLICT,
        "sandbox is booting, not running",
    );

    daemon.backend.hold_boots(false);
    let (status, created) = create.await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["id"], ids[0].as_str());
    assert_eq!(daemon.exec_ok(&ids[0], "echo:x").await["stdout"], "x\n");
    daemon.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let daemon = Daemon::start();
    let (status, body) = daemon
        .call_raw(Method::POST, "/sandboxes", Body::from(vec![b' '; 5 * 1024]))
        .await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "request body too large (limit 4096 bytes)",
    );

    let id = daemon.create("python").await;
    let code = "x".repeat(EXEC_BODY_LIMIT);
    let (status, body) = daemon.exec(&id, json!({ "code": code })).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "request body too large (limit 16777216 bytes)",
    );
    daemon.stop().await;
}

#[tokio::test]
async fn wrong_methods_are_405_and_unknown_routes_404() {
    let daemon = Daemon::start();
    let id = daemon.create("shell").await;
    for (method, uri) in [
        (Method::PUT, "/sandboxes".to_owned()),
        (Method::POST, "/info".to_owned()),
        (Method::GET, format!("/sandboxes/{id}/exec")),
        (Method::POST, format!("/sandboxes/{id}")),
    ] {
        let (status, body) = daemon.call(method.clone(), &uri, None).await;
        assert_error(
            status,
            &body,
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
        );
    }
    let (status, body) = daemon.call(Method::GET, "/nope", None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "no such route");
    daemon.stop().await;
}

#[tokio::test]
async fn output_over_the_cap_is_cut_and_flagged() {
    let daemon = Daemon::start();
    let id = daemon.create("python").await;
    let result = daemon
        .exec_ok(
            &id,
            &format!("flood:{}\nstderr:small", OUTPUT_CAP + 100_000),
        )
        .await;
    assert_eq!(result["stdout"].as_str().unwrap().len(), OUTPUT_CAP);
    assert_eq!(result["stdout_truncated"], true);
    assert_eq!(result["stderr"], "small\n");
    assert!(
        result.get("stderr_truncated").is_none(),
        "{}",
        result["stderr_truncated"]
    );
    assert_eq!(result["exit_code"], 0);

    let exact = daemon.exec_ok(&id, &format!("flood:{OUTPUT_CAP}")).await;
    assert_eq!(exact["stdout"].as_str().unwrap().len(), OUTPUT_CAP);
    assert!(exact.get("stdout_truncated").is_none());
    daemon.stop().await;
}

#[tokio::test]
async fn non_utf8_output_is_decoded_lossily() {
    let daemon = Daemon::start();
    let id = daemon.create("python").await;
    let result = daemon.exec_ok(&id, "bytes:fffe410a").await;
    assert_eq!(result["stdout"], "\u{fffd}\u{fffd}A\n");
    assert_eq!(result["exit_code"], 0);
    daemon.stop().await;
}

#[tokio::test]
async fn a_timeout_answers_minus_one_and_keeps_the_partial_output() {
    let daemon = Daemon::start();
    let id = daemon.create("python").await;
    let (status, result) = daemon
        .exec(
            &id,
            json!({ "code": "echo:partial\nstderr:so far\nblock", "timeout_ms": 100 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["exit_code"], -1);
    assert_eq!(result["error"], "execution timed out");
    assert_eq!(result["stdout"], "partial\n");
    assert_eq!(result["stderr"], "so far\n");
    assert!(result["duration_ms"].as_u64().unwrap() >= 100);
    assert_eq!(
        daemon.backend.running_execs(),
        0,
        "the guest's process was killed"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_signal_death_answers_minus_one() {
    let daemon = Daemon::start();
    let id = daemon.create("shell").await;
    let result = daemon.exec_ok(&id, "echo:before\nsignal:9").await;
    assert_eq!(result["exit_code"], -1);
    assert_eq!(result["error"], "killed by signal 9");
    assert_eq!(result["stdout"], "before\n");
    daemon.stop().await;
}

#[tokio::test]
async fn a_boot_failure_is_500_and_leaves_nothing() {
    let daemon = Daemon::start();
    daemon.backend.fail_boots(true);
    let (status, body) = daemon
        .call(
            Method::POST,
            "/sandboxes",
            Some(json!({ "language_pack": "shell" })),
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(keys(&body), ["error"]);
    let message = body["error"].as_str().unwrap();
    assert!(message.starts_with("sandbox failed to boot"), "{message}");
    assert!(
        message.contains("told to fail boots"),
        "the cause is kept: {message}"
    );
    daemon.assert_nothing_left();
    daemon.stop().await;
}

#[tokio::test]
async fn info_reports_the_pools() {
    let daemon = Daemon::with(fixture::Options {
        pool_size: 1,
        ..fixture::Options::default()
    });
    wait_until_async("the pools are full", || async {
        daemon.info().await["pool_ready"] == json!({ "python": 1, "shell": 1 })
    })
    .await;
    assert_eq!(daemon.info().await["boot_path"], "warm-pool");
    daemon.stop().await;
}

#[tokio::test]
async fn info_reports_the_isolation_of_the_accelerator() {
    // A backend that reports no accelerator has no isolation to name.
    let daemon = Daemon::start();
    let info = daemon.info().await;
    assert_eq!(info.get("isolation"), None, "{info}");
    daemon.stop().await;

    for (accel, isolation) in [
        (emberd::vmm::Accel::Tcg, "tcg-emulation"),
        (emberd::vmm::Accel::Kvm, "kvm"),
    ] {
        let daemon = Daemon::start();
        daemon.backend.report_acceleration(accel);
        let info = daemon.info().await;
        assert_eq!(info["isolation"], isolation, "{info}");
        assert_eq!(info["accel"], accel.as_str(), "{info}");
        daemon.stop().await;
    }
}

#[tokio::test]
async fn requests_over_the_concurrency_limit_are_429_until_one_ends() {
    let daemon = Daemon::start();
    let config = emberd::api::HttpConfig {
        max_concurrent_requests: 2,
        ..emberd::api::HttpConfig::default()
    };
    let app = emberd::api::app_with(daemon.manager.clone(), &config);
    let id = daemon.create("shell").await;
    let exec = |app: axum::Router| {
        let uri = format!("/sandboxes/{id}/exec");
        async move {
            let body = json!({ "code": "block\necho:done" });
            fixture::call(app, Method::POST, &uri, Some(body)).await
        }
    };
    let first = tokio::spawn(exec(app.clone()));
    let second = tokio::spawn(exec(app.clone()));
    wait_until("both execs hold a permit", || {
        daemon.backend.blocked_execs() == 2
    })
    .await;

    let response = tower::ServiceExt::oneshot(
        app.clone(),
        axum::http::Request::get("/info")
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, body) = fixture::call(app.clone(), Method::GET, "/sandboxes", None).await;
    assert_error(
        status,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "too many requests in flight (limit 2); retry later",
    );
    // A busy daemon is not a dead one.
    let (status, _) = fixture::call(app.clone(), Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);

    daemon.backend.release_blocked();
    for exec in [first, second] {
        let (status, body) = exec.await.unwrap();
        assert_eq!(
            (status, &body["stdout"]),
            (StatusCode::OK, &json!("done\n")),
            "{body}"
        );
    }
    let (status, _) = fixture::call(app, Method::GET, "/info", None).await;
    assert_eq!(status, StatusCode::OK, "the permits came back");
    daemon.stop().await;
}
