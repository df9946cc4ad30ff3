//! Firecracker's OpenAPI (Swagger 2.0) description, and checking requests
//! against it: known path and method, body present when required, and the
//! body's shape (types, required fields, enums, no unknown fields — the
//! real Firecracker deserialises with `deny_unknown_fields`).

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

/// The spec shipped beside the repository (`../shared/firecracker/`);
/// build.rs stops the build with a clear message when it is missing.
pub const SPEC_TEXT: &str = include_str!("../../../../shared/firecracker/firecracker-v1.15.1.yaml");

pub struct Spec {
    root: Yaml,
}

/// A request that matched a route: its template and path parameters.
#[derive(Debug)]
pub struct Route {
    pub template: String,
    pub params: Vec<(String, String)>,
}

impl Spec {
    /// The spec named by `FAKE_FC_SPEC`, else the one built in.
    pub fn load() -> anyhow::Result<Spec> {
        let text = match std::env::var_os("FAKE_FC_SPEC") {
            Some(path) => std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("FAKE_FC_SPEC={}: {e}", path.to_string_lossy()))?,
            None => SPEC_TEXT.to_owned(),
        };
        let root: Yaml = serde_yaml::from_str(&text)?;
        anyhow::ensure!(
            root.get("paths").and_then(Yaml::as_mapping).is_some(),
            "the Firecracker spec has no paths"
        );
        Ok(Spec { root })
    }

    /// Finds the route of `path` and checks `method` and `body` against it.
    pub fn check(&self, method: &str, path: &str, body: Option<&Json>) -> Result<Route, String> {
        let paths = self
            .root
            .get("paths")
            .and_then(Yaml::as_mapping)
            .ok_or("spec has no paths")?;
        let (template, operations) = paths
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?, v)))
            .find(|(template, _)| match_template(template, path).is_some())
            .ok_or_else(|| format!("Invalid request URI: {path}"))?;
        let params = match_template(template, path).unwrap_or_default();
        let operation = operations
            .get(method.to_ascii_lowercase())
            .ok_or_else(|| format!("Invalid request method: {method} {path}"))?;
        let body_param = operation
            .get("parameters")
            .and_then(Yaml::as_sequence)
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p.get("in").and_then(Yaml::as_str) == Some("body"))
            });
        match (body_param, body) {
            (Some(param), Some(body)) => {
                let schema = param.get("schema").ok_or("body parameter without schema")?;
                self.validate(schema, body, "body")?;
            }
            (Some(param), None) => {
                if param
                    .get("required")
                    .and_then(Yaml::as_bool)
                    .unwrap_or(false)
                {
                    return Err(format!("Empty request body for {method} {path}"));
                }
            }
            (None, Some(body)) if !body.is_null() => {
                return Err(format!("{method} {path} takes no body"));
            }
            (None, _) => {}
        }
        Ok(Route {
            template: template.to_owned(),
            params,
        })
    }

    fn resolve<'a>(&'a self, schema: &'a Yaml) -> Result<&'a Yaml, String> {
        match schema.get("$ref").and_then(Yaml::as_str) {
            Some(reference) => {
                let name = reference
                    .strip_prefix("#/definitions/")
                    .ok_or("unsupported $ref")?;
                self.root
                    .get("definitions")
                    .and_then(|d| d.get(name))
                    .ok_or_else(|| format!("unknown definition {name}"))
            }
            None => Ok(schema),
        }
    }

    fn validate(&self, schema: &Yaml, value: &Json, at: &str) -> Result<(), String> {
        let schema = self.resolve(schema)?;
        if let Some(options) = schema.get("enum").and_then(Yaml::as_sequence) {
            let allowed: Vec<&str> = options.iter().filter_map(Yaml::as_str).collect();
            if !value.as_str().is_some_and(|v| allowed.contains(&v)) {
                return Err(format!(
                    "{at}: unknown variant {value}, expected one of {allowed:?}"
                ));
            }
        }
        let kind = schema.get("type").and_then(Yaml::as_str).unwrap_or(
            if schema.get("properties").is_some() {
                "object"
            } else {
                "any"
            },
        );
        let ok = match kind {
            "object" => value.is_object(),
            "string" => value.is_string(),
            "integer" => value.as_i64().is_some() || value.as_u64().is_some(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "array" => value.is_array(),
            _ => true,
        };
        if !ok {
            return Err(format!("{at}: invalid type: {value}, expected {kind}"));
        }
        if let (Some(minimum), Some(n)) =
            (schema.get("minimum").and_then(Yaml::as_i64), value.as_i64())
        {
            if n < minimum {
                return Err(format!("{at}: {n} is below the minimum {minimum}"));
            }
        }
        if let Some(object) = value.as_object() {
            let properties = schema.get("properties").and_then(Yaml::as_mapping);
            if let Some(required) = schema.get("required").and_then(Yaml::as_sequence) {
                for field in required.iter().filter_map(Yaml::as_str) {
                    if !object.contains_key(field) {
                        return Err(format!("{at}: missing field `{field}`"));
                    }
                }
            }
            for (field, item) in object {
                let property = properties.and_then(|p| p.get(field.as_str()));
                match property {
                    Some(property) => self.validate(property, item, &format!("{at}.{field}"))?,
                    None if properties.is_some() => {
                        return Err(format!("{at}: unknown field `{field}`"));
                    }
                    None => {}
                }
            }
        }
        if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
            for (i, item) in array.iter().enumerate() {
                self.validate(items, item, &format!("{at}[{i}]"))?;
            }
        }
        Ok(())
    }
}

/// `/drives/{drive_id}` against `/drives/rootfs` → `[("drive_id", "rootfs")]`.
fn match_template(template: &str, path: &str) -> Option<Vec<(String, String)>> {
    let t: Vec<&str> = template.trim_end_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    if t.len() != p.len() {
        return None;
    }
    let mut params = Vec::new();
    for (a, b) in t.iter().zip(&p) {
        if let Some(name) = a.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
            if b.is_empty() {
                return None;
            }
            params.push((name.to_owned(), (*b).to_owned()));
        } else if a != b {
            return None;
        }
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_are_checked_against_the_spec() {
        let spec = Spec::load().unwrap();
        let ok = spec
            .check(
                "PUT",
                "/boot-source",
                Some(&json!({"kernel_image_path": "/k", "boot_args": "x"})),
            )
            .unwrap();
        assert_eq!(ok.template, "/boot-source");
        let drive = spec
            .check(
                "PUT",
                "/drives/rootfs",
                Some(&json!({"drive_id": "rootfs", "is_root_device": false, "path_on_host": "/p"})),
            )
            .unwrap();
        assert_eq!(drive.params, [("drive_id".to_owned(), "rootfs".to_owned())]);
        for (method, path, body, fault) in [
            ("PUT", "/nope", json!({}), "Invalid request URI"),
            (
                "DELETE",
                "/boot-source",
                json!(null),
                "Invalid request method",
            ),
            (
                "PUT",
                "/boot-source",
                json!({"boot_args": "x"}),
                "missing field `kernel_image_path`",
            ),
            (
                "PUT",
                "/boot-source",
                json!({"kernel_image_path": 3}),
                "invalid type",
            ),
            (
                "PUT",
                "/boot-source",
                json!({"kernel_image_path": "/k", "extra": 1}),
                "unknown field `extra`",
            ),
            (
                "PUT",
                "/actions",
                json!({"action_type": "Explode"}),
                "unknown variant",
            ),
            (
                "PUT",
                "/machine-config",
                json!({"vcpu_count": "2", "mem_size_mib": 1}),
                "invalid type",
            ),
        ] {
            let err = spec.check(method, path, Some(&body)).unwrap_err();
            assert!(err.contains(fault), "{method} {path} {body}: {err}");
        }
    }
}
