//! The exec API's limits end to end, on a real VM: output over the cap is
//! cut and flagged, a timeout over the maximum and a body over 16 MiB are
//! refused, and output that is not UTF-8 comes back decoded lossily.

mod support;

use reqwest::Method;
use serde_json::json;

/// Per-stream output cap of an exec.
const OUTPUT_CAP: usize = 4 * 1024 * 1024;
/// Largest exec body.
const BODY_LIMIT: usize = 16 * 1024 * 1024;
/// The longest timeout an exec may ask for, in ms.
const MAX_TIMEOUT_MS: u64 = 3_600_000;

#[tokio::test]
async fn exec_limits_hold_over_http() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let id = api.create("python").await;

    // A flood of stdout: the first 4 MiB come back, flagged as cut.
    let out = api
        .exec(
            &id,
            "import sys\nsys.stdout.write('x' * (5 << 20))\nsys.stderr.write('done')",
        )
        .await;
    assert_eq!(out.exit_code, 0, "{:?}", out.error);
    assert_eq!(out.stdout.len(), OUTPUT_CAP);
    assert!(out.stdout.bytes().all(|b| b == b'x'));
    assert!(out.stdout_truncated);
    assert_eq!(out.stderr, "done");
    assert!(!out.stderr_truncated);

    // A timeout over the maximum is the client's mistake; the maximum itself is fine.
    let (status, body) = api
        .exec_raw(
            &id,
            &json!({ "code": "print(1)", "timeout_ms": MAX_TIMEOUT_MS + 1 }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body,
        json!({ "error": format!("invalid request: timeout_ms must be at most {MAX_TIMEOUT_MS}") })
    );
    let out = api
        .exec_with(
            &id,
            json!({ "code": "print(1)", "timeout_ms": MAX_TIMEOUT_MS }),
        )
        .await;
    assert_eq!(out.stdout, "1\n");

    // A body of exactly the limit is read; one byte more is a 413.
    let path = format!("/sandboxes/{id}/exec");
    let padded = |len: usize| {
        let mut body = br#"{"code":"print(2)"}"#.to_vec();
        body.resize(len, b' ');
        body
    };
    let (status, body) = api.raw(Method::POST, &path, Some(padded(BODY_LIMIT))).await;
    assert_eq!((status, &body["stdout"]), (200, &json!("2\n")), "{body}");
    let (status, body) = api
        .raw(Method::POST, &path, Some(padded(BODY_LIMIT + 1)))
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(
        body,
        json!({ "error": format!("request body too large (limit {BODY_LIMIT} bytes)") })
    );

    // Bytes that are not UTF-8 become U+FFFD; the exec is still a 200.
    let out = api
        .exec(
            &id,
            "import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe end\\n')\nsys.stderr.buffer.write(b'\\xc3(')",
        )
        .await;
    assert_eq!(out.stdout, "ok \u{FFFD}\u{FFFD} end\n");
    assert_eq!(out.stderr, "\u{FFFD}(");
    assert_eq!(out.exit_code, 0);

    assert_eq!(api.delete(&id).await, 204);
}
