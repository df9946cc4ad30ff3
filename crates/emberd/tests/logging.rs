//! Log lines of a real daemon with `--log-format json`: every line is one
//! JSON object, and the lines a sandbox's requests cause (the create's
//! "sandbox ready", the delete's "sandbox deleted") carry its id in their
//! span, so a collector can select one sandbox's lines.

mod support;

use serde_json::Value;

fn lines_naming(log: &str, id: &str) -> Vec<Value> {
    log.lines()
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"))
        })
        .filter(|line| {
            let spans = line["spans"].as_array().cloned().unwrap_or_default();
            spans.iter().any(|span| span["sandbox"] == id)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn json_log_lines_carry_the_sandbox_id_of_the_request() {
    let daemon = support::start(&["--log-format", "json"]);
    let api = support::api(&daemon);
    let id = api.create("python").await;
    let result = api.exec(&id, "print(6*7)").await;
    assert_eq!(result.stdout, "42\n");
    assert_eq!(api.delete(&id).await, 204);

    let log = daemon.log_text();
    let mine = lines_naming(&log, &id);
    let messages: Vec<&str> = mine
        .iter()
        .filter_map(|line| line["fields"]["message"].as_str())
        .collect();
    assert!(
        messages.contains(&"sandbox ready"),
        "no 'sandbox ready' line in the create's span: {messages:?}\n{log}"
    );
    assert!(
        messages.contains(&"sandbox deleted"),
        "no 'sandbox deleted' line in the delete's span: {messages:?}\n{log}"
    );
    for line in &mine {
        assert_eq!(line["span"]["name"], "request", "{line}");
    }
}
