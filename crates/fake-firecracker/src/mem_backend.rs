//! The memory backend a `/snapshot/load` must name.

use serde_json::Value;

/// The memory file of a `/snapshot/load`, which must come as a `File`
/// memory backend: Firecracker then maps it privately (copy-on-write), as
/// emberd's restores rely on. Stricter than Firecracker, which still takes
/// the deprecated `mem_file_path` (read the same way) and a `Uffd` backend
/// (a page-fault handler emberd does not run).
pub(crate) fn file_backend(body: &Value) -> Result<&str, String> {
    if body.get("mem_file_path").is_some() {
        return Err("the deprecated mem_file_path is refused: load memory through mem_backend {backend_type: File}".into());
    }
    let backend = body.get("mem_backend").unwrap_or(&Value::Null);
    match backend.get("backend_type").and_then(Value::as_str) {
        Some("File") => {}
        other => {
            return Err(format!(
                "mem_backend.backend_type must be \"File\" (a private mapping of the memory file), not {other:?}"
            ))
        }
    }
    match backend.get("backend_path").and_then(Value::as_str) {
        Some(path) if !path.is_empty() => Ok(path),
        _ => Err("mem_backend.backend_path must name the memory file".into()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::file_backend;

    #[test]
    fn a_snapshot_load_must_name_its_memory_as_a_file_backend() {
        let good = json!({"snapshot_path": "s", "mem_backend": {"backend_type": "File", "backend_path": "/vm.mem"}});
        assert_eq!(file_backend(&good), Ok("/vm.mem"));
        let deprecated = json!({"snapshot_path": "s", "mem_file_path": "/vm.mem"});
        assert!(file_backend(&deprecated)
            .unwrap_err()
            .contains("deprecated"));
        let uffd = json!({"snapshot_path": "s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/uffd.sock"}});
        assert!(file_backend(&uffd).unwrap_err().contains("\"Uffd\""));
        let untyped = json!({"snapshot_path": "s", "mem_backend": {"backend_path": "/vm.mem"}});
        assert!(file_backend(&untyped).is_err());
        let pathless = json!({"snapshot_path": "s", "mem_backend": {"backend_type": "File", "backend_path": ""}});
        assert!(file_backend(&pathless).is_err());
    }
}
