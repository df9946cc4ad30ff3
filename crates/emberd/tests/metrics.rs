//! `GET /metrics` through `api::app()` over the fake backend: the metric
//! families and their values after creates (cold boot, warm pool, a failed
//! boot), unary and streamed execs and a delete, template builds and restores, and that the route is behind the token.

mod fixture;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use emberd::api::auth::Tokens;
use emberd::api::HttpConfig;
use emberd::sandbox::{ExecParams, ExecStreamEvent};
use fixture::{wait_until_async, Daemon, Options, MEMORY_MIB};
use http_body_util::BodyExt;
use tower::ServiceExt;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics` with an optional bearer token: status, content type, text.
async fn scrape_with(app: &axum::Router, token: Option<&str>) -> (StatusCode, String, String) {
    let mut request = Request::builder().method(Method::GET).uri("/metrics");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

/// The scrape's text, expecting a 200 in the OpenMetrics format.
async fn scrape(daemon: &Daemon) -> String {
    let (status, content_type, text) = scrape_with(&daemon.app, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(content_type, OPENMETRICS);
    assert!(text.ends_with("# EOF\n"), "{text}");
    text
}

/// The value of the sample named exactly `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        Some(value.parse().unwrap())
    })
}

fn assert_sample(text: &str, series: &str, expected: f64) {
    assert_eq!(sample(text, series), Some(expected), "{series} in:\n{text}");
}

#[tokio::test]
async fn a_create_and_an_exec_show_in_every_family() {
    let daemon = Daemon::start();
    let before = scrape(&daemon).await;
    // Counters and histograms are there from the start, at zero.
    for series in [
        "emberd_creates_total{boot_path=\"cold-boot\"}",
        "emberd_creates_total{boot_path=\"snapshot-restore\"}",
        "emberd_creates_total{boot_path=\"warm-pool\"}",
        "emberd_create_duration_seconds_count{boot_path=\"cold-boot\"}",
        "emberd_boot_failures_total{pack=\"python\"}",
        "emberd_boot_failures_total{pack=\"shell\"}",
        "emberd_restore_failures_total{pack=\"python\"}",
        "emberd_template_builds_total{pack=\"python\",result=\"ok\"}",
        "emberd_restores_given_up_total",
        "emberd_reaped_total",
        "emberd_guest_memory_committed_bytes",
    ] {
        assert_sample(&before, series, 0.0);
    }
    assert_sample(&before, "emberd_exec_duration_seconds_count", 0.0);
    assert_sample(&before, "emberd_held_sandboxes", 0.0);
    assert_eq!(
        sample(
            &before,
            "emberd_sandboxes{state=\"running\",pack=\"python\"}"
        ),
        None
    );

    let id = daemon.create("python").await;
    assert_eq!(daemon.exec_ok(&id, "echo:hi").await["stdout"], "hi\n");
    let text = scrape(&daemon).await;
    assert_sample(&text, "emberd_creates_total{boot_path=\"cold-boot\"}", 1.0);
    assert_sample(
        &text,
        "emberd_create_duration_seconds_count{boot_path=\"cold-boot\"}",
        1.0,
    );
    assert_sample(&text, "emberd_exec_duration_seconds_count", 1.0);
    assert_sample(
        &text,
        "emberd_sandboxes{state=\"running\",pack=\"python\"}",
        1.0,
    );
    assert_sample(&text, "emberd_held_sandboxes", 1.0);
    assert_sample(
        &text,
        "emberd_guest_memory_committed_bytes",
        f64::from(MEMORY_MIB) * 1024.0 * 1024.0,
    );
    assert_sample(&text, "emberd_reaped_total", 0.0);
    assert_sample(&text, "emberd_restores_given_up_total", 0.0);

    // A streamed exec counts too; a deleted sandbox leaves the gauge.
    let mut stream = daemon
        .manager
        .exec_stream(
            &id,
            ExecParams {
                code: "echo:streamed".into(),
                ..ExecParams::default()
            },
        )
        .unwrap();
    loop {
        match stream.next().await.expect("the stream ends with Done") {
            ExecStreamEvent::Done(result) => break assert!(result.is_ok(), "{result:?}"),
            ExecStreamEvent::Output(..) => {}
        }
    }
    daemon.manager.delete(&id).await.unwrap();
    let text = scrape(&daemon).await;
    assert_sample(&text, "emberd_exec_duration_seconds_count", 2.0);
    assert_eq!(
        sample(&text, "emberd_sandboxes{state=\"running\",pack=\"python\"}"),
        None
    );
    assert_sample(&text, "emberd_held_sandboxes", 0.0);
    daemon.stop().await;
}

#[tokio::test]
async fn a_pooled_create_is_a_warm_pool_create_and_pools_show_their_ready_vms() {
    let daemon = Daemon::with_full_python_pool(1).await;
    let text = scrape(&daemon).await;
    assert_sample(&text, "emberd_pool_ready{pack=\"python\"}", 1.0);

    daemon.create("python").await;
    let text = scrape(&daemon).await;
    assert_sample(&text, "emberd_creates_total{boot_path=\"warm-pool\"}", 1.0);
    assert_sample(&text, "emberd_creates_total{boot_path=\"cold-boot\"}", 0.0);
    daemon.stop().await;
}

#[tokio::test]
async fn a_failed_boot_is_counted_and_is_no_create() {
    let daemon = Daemon::start();
    daemon.backend.fail_boots(true);
    daemon.manager.create("shell").await.unwrap_err();
    let text = scrape(&daemon).await;
    assert_sample(&text, "emberd_boot_failures_total{pack=\"shell\"}", 1.0);
    assert_sample(&text, "emberd_creates_total{boot_path=\"cold-boot\"}", 0.0);
    assert_sample(&text, "emberd_held_sandboxes", 0.0);
    daemon.backend.fail_boots(false);
    daemon.stop().await;
}

#[tokio::test]
async fn template_builds_restores_and_a_failed_restore_are_counted() {
    let daemon = Daemon::with(Options {
        templates: true,
        warm_templates_at_start: true,
        ..Options::default()
    });
    // A build is counted once its template is published, after its VM stops.
    wait_until_async("both templates are built and counted", || async {
        let text = scrape(&daemon).await;
        daemon.backend.snapshots_taken() == 2
            && daemon.backend.live_vms() == 0
            && daemon.info().await["boot_path"] == "snapshot-restore"
            && ["python", "shell"].iter().all(|pack| {
                sample(
                    &text,
                    &format!("emberd_template_builds_total{{pack=\"{pack}\",result=\"ok\"}}"),
                ) == Some(1.0)
            })
    })
    .await;
    let text = scrape(&daemon).await;
    for pack in ["python", "shell"] {
        assert_sample(
            &text,
            &format!("emberd_template_builds_total{{pack=\"{pack}\",result=\"ok\"}}"),
            1.0,
        );
        assert_sample(
            &text,
            &format!("emberd_template_builds_total{{pack=\"{pack}\",result=\"failed\"}}"),
            0.0,
        );
    }

    daemon.manager.create("shell").await.unwrap();
    daemon.backend.fail_restores(true);
    daemon.manager.create("python").await.unwrap();
    daemon.backend.fail_restores(false);
    let text = scrape(&daemon).await;
    assert_sample(
        &text,
        "emberd_creates_total{boot_path=\"snapshot-restore\"}",
        1.0,
    );
    assert_sample(&text, "emberd_creates_total{boot_path=\"cold-boot\"}", 1.0);
    assert_sample(&text, "emberd_restore_failures_total{pack=\"python\"}", 1.0);
    assert_sample(&text, "emberd_restore_failures_total{pack=\"shell\"}", 0.0);
    assert_sample(&text, "emberd_boot_failures_total{pack=\"python\"}", 0.0);
    // The VMM refused an intact template: the pack's restores are given up.
    assert_sample(&text, "emberd_restores_given_up_total", 1.0);
    daemon.stop().await;
}

#[tokio::test]
async fn metrics_need_the_token_when_one_is_configured() {
    let daemon = Daemon::start();
    let token = "metrics-token-0123456789abcdef";
    let app = emberd::api::app_with(
        daemon.manager.clone(),
        &HttpConfig {
            tokens: Tokens::new([token]),
            ..HttpConfig::default()
        },
    );
    let (status, _, _) = scrape_with(&app, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, content_type, text) = scrape_with(&app, Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(content_type, OPENMETRICS);
    daemon.stop().await;
}
