//! The OpenAPI document against the router: every route is documented,
//! every documented operation is served, `GET /openapi.json` serves the
//! generated document (with the bearer requirement only when the daemon has
//! tokens), and the committed `docs/openapi.json` is that document.

mod fixture;

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use emberd::api::auth::Tokens;
use emberd::api::HttpConfig;
use fixture::Daemon;
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

/// The routing calls that add a route without its documentation. Routes
/// are registered with `utoipa_axum`'s `routes!` from handlers carrying
/// `#[utoipa::path]`; a service that no handler serves gets a doc-only
/// operation in `api/openapi.rs` and an entry in [`ALLOWED`].
const UNDOCUMENTED_ROUTING: [&str; 6] = [
    ".route(",
    ".route_service(",
    ".nest(",
    ".nest_service(",
    "routing::get",
    "routing::post",
];

/// (file under `src/`, path it serves): routes added without `routes!`,
/// each documented by a doc-only operation in `api/openapi.rs`.
const ALLOWED: [(&str, &str); 1] = [("api/mcp.rs", "/mcp")];

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

fn document(tokens: bool) -> Value {
    serde_json::from_str(&emberd::api::openapi_json(tokens)).unwrap()
}

/// Every (method, path) of the document, with `{id}` and `{pid}` filled in.
fn operations(document: &Value) -> Vec<(Method, String, String)> {
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let Ok(parsed) = Method::from_bytes(method.to_uppercase().as_bytes()) else {
                continue;
            };
            let uri = path
                .replace("{id}", "sb_000000000000")
                .replace("{pid}", "1");
            found.push((parsed, uri, path.clone()));
        }
    }
    found
}

async fn answer(app: axum::Router, method: Method, uri: &str) -> (StatusCode, Vec<u8>) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body.to_vec())
}

#[test]
fn the_committed_document_is_the_generated_one() {
    let committed_path = crate_dir().join("../../docs/openapi.json");
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == emberd::api::openapi_json(true),
        "docs/openapi.json is stale (or missing): regenerate it with `make openapi` \
         (`emberd openapi > docs/openapi.json`) and commit it"
    );
}

#[test]
fn no_route_is_added_without_its_documentation() {
    let mut files = Vec::new();
    rust_files(&crate_dir().join("src"), &mut files);
    files.sort();
    let mut offenders = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(crate_dir().join("src")).unwrap();
        let relative = relative.to_string_lossy();
        if ALLOWED.iter().any(|(allowed, _)| *allowed == relative) {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        // A module's own tests may build throwaway routers.
        let served = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in served.lines().enumerate() {
            if UNDOCUMENTED_ROUTING.iter().any(|call| line.contains(call)) {
                offenders.push(format!("src/{relative}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "routes added outside `utoipa_axum::routes!` are missing from the OpenAPI document; \
         register them with `routes!` from a `#[utoipa::path]` handler (or, for a nested \
         service, add a doc-only operation to api/openapi.rs and allow the file in this \
         test):\n{}",
        offenders.join("\n")
    );
    let document = document(false);
    for (file, path) in ALLOWED {
        assert!(
            document["paths"].get(path).is_some(),
            "{file} serves {path}, which the document lacks"
        );
    }
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let daemon = Daemon::start();
    let operations = operations(&document(false));
    assert!(operations.len() >= 20, "{operations:?}");
    for (method, uri, path) in operations {
        let (status, body) = answer(daemon.app.clone(), method.clone(), &uri).await;
        let body = String::from_utf8_lossy(&body);
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} is documented but not routed"
        );
        assert!(
            !body.contains("no such route"),
            "{method} {path} is documented but not routed: {status} {body}"
        );
    }
    // The fallbacks still answer what no route serves.
    let (status, body) = answer(daemon.app.clone(), Method::GET, "/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("no such route"));
    let (status, _) = answer(daemon.app.clone(), Method::PATCH, "/sandboxes").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    daemon.stop().await;
}

#[tokio::test]
async fn the_served_document_says_whether_a_token_is_needed() {
    let daemon = Daemon::start();
    let (status, body) = answer(daemon.app.clone(), Method::GET, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let open: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(open, document(false));
    assert_eq!(open["openapi"], "3.1.0");
    assert!(open.get("security").is_none(), "{}", open["security"]);
    assert!(open["components"]["securitySchemes"]["bearer"].is_object());

    let token = "a-token-of-sixteen-or-more";
    let config = HttpConfig {
        tokens: Tokens::new([token]),
        ..HttpConfig::default()
    };
    let app = emberd::api::app_with(daemon.manager.clone(), &config);
    let request = Request::get("/openapi.json")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let guarded: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(guarded, document(true));
    assert_eq!(guarded["security"], serde_json::json!([{ "bearer": [] }]));
    let healthz = &guarded["paths"]["/healthz"]["get"];
    assert!(healthz["responses"].get("401").is_none());
    let info = &guarded["paths"]["/info"]["get"];
    assert!(info["responses"]["401"].is_object());
    daemon.stop().await;
}

#[test]
fn every_error_answer_is_an_error_body() {
    let document = document(true);
    for (method, _, path) in operations(&document) {
        // A nested service (MCP) answers its own errors in its own protocol's shape.
        if ALLOWED.iter().any(|(_, served)| *served == path) {
            continue;
        }
        let operation = &document["paths"][&path][method.as_str().to_lowercase()];
        for (status, answer) in operation["responses"].as_object().unwrap() {
            if !status.starts_with('4') && !status.starts_with('5') {
                continue;
            }
            let schema = &answer["content"]["application/json"]["schema"]["$ref"];
            if method == Method::HEAD {
                assert!(answer.get("content").is_none(), "{method} {path} {status}");
            } else {
                assert_eq!(
                    schema, "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
    }
}
