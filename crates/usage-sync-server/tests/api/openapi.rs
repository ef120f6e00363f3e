//! The OpenAPI document: a committed snapshot, every served route described,
//! and real responses of every operation valid against their schemas.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::spawn_app_with;

const SNAPSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");

#[test]
fn the_document_matches_the_committed_snapshot() {
    let doc = usage_sync_server::http::openapi::document();
    let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(SNAPSHOT, &text).unwrap();
    }
    let committed = std::fs::read_to_string(SNAPSHOT).unwrap_or_default();
    assert!(
        committed == text,
        "the OpenAPI document changed: review the difference and accept it with \
         `UPDATE_OPENAPI=1 cargo test -p usage-sync-server --test api openapi`"
    );
    assert_eq!(doc["openapi"], json!("3.1.0"));
}

#[test]
fn every_route_the_router_serves_is_described() {
    let doc = usage_sync_server::http::openapi::document();
    let router = include_str!("../../src/http/mod.rs");
    let mut served = Vec::new();
    for part in router.split(".route(").skip(1) {
        let path = part.trim_start().trim_start_matches('"');
        let path = &path[..path.find('"').unwrap()];
        served.push(path.to_owned());
    }
    assert!(served.len() >= 20, "{served:?}");
    for path in served {
        // The dashboard's static assets are files, not API operations.
        if path.starts_with("/dashboard/") {
            continue;
        }
        assert!(
            doc["paths"].get(&path).is_some(),
            "{path} is served but not in the OpenAPI document"
        );
    }
}

/// Validates `v` against a JSON Schema subset (what utoipa emits: type,
/// properties, required, additionalProperties, items, oneOf/anyOf/allOf,
/// enum, $ref into components). Returns the first mismatch.
fn validate(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap();
        return validate(doc, &doc["components"]["schemas"][name], v, at);
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            validate(doc, s, v, at)?;
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(any) = schema.get(key).and_then(Value::as_array)
            && !any.iter().any(|s| validate(doc, s, v, at).is_ok())
        {
            return Err(format!("{at}: {v} matches none of {key} {any:?}"));
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        return Err(format!("{at}: {v} not in {e:?}"));
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() {
        let ok = types.iter().any(|t| match *t {
            "null" => v.is_null(),
            "boolean" => v.is_boolean(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "string" => v.is_string(),
            "array" => v.is_array(),
            "object" => v.is_object(),
            _ => false,
        });
        if !ok {
            return Err(format!("{at}: {v} is not of type {types:?}"));
        }
    }
    if let Some(obj) = v.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        if let Some(req) = schema.get("required").and_then(Value::as_array) {
            for r in req {
                let r = r.as_str().unwrap();
                if !obj.contains_key(r) {
                    return Err(format!("{at}: required field {r} missing in {v}"));
                }
            }
        }
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(doc, s, val, &format!("{at}.{k}"))?,
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) if props.is_some() => {
                        return Err(format!("{at}: field {k} is not in the schema"));
                    }
                    Some(s @ Value::Object(_)) => validate(doc, s, val, &format!("{at}.{k}"))?,
                    _ => {}
                },
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            validate(doc, items, x, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// The path of `doc` that `url` is an instance of: itself, or a template
/// such as `/v1/users/{user_id}/usage` for `/v1/users/o/usage`. The query
/// is left out.
fn template<'d>(doc: &'d Value, url: &str) -> &'d str {
    let path = url.split('?').next().unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let parts: Vec<&str> = path.split('/').collect();
    let fits = |t: &str| {
        let t: Vec<&str> = t.split('/').collect();
        t.len() == parts.len()
            && t.iter()
                .zip(&parts)
                .all(|(a, b)| a == b || a.starts_with('{'))
    };
    paths
        .get_key_value(path)
        .map(|(k, _)| k)
        .or_else(|| paths.keys().find(|t| fits(t)))
        .unwrap_or_else(|| panic!("no path of the document fits {url}"))
}

#[tokio::test]
async fn real_responses_of_every_operation_match_their_schemas() {
    let app = spawn_app_with(&[("USAGE_SYNC_ENABLE_SIMULATION", "true")]).await;
    let (s, doc) = app.get("/openapi.json").await;
    assert_eq!(s, 200);
    // "METHOD url", body, the status expected.
    let calls: Vec<(&str, Option<Value>, u16)> = vec![
        (
            "POST /v1/consume",
            Some(json!({"user_id": "o", "kind": "premium", "amount": 10, "request_id": "r1"})),
            200,
        ),
        (
            "POST /v1/consume",
            Some(json!({"user_id": "o", "kind": "premium", "request_id": "r2"})),
            429,
        ),
        (
            "POST /v1/consume",
            Some(json!({"user_id": "o", "kind": "premium", "amount": 10, "request_id": "r1"})),
            200,
        ),
        (
            "POST /v1/consume",
            Some(json!({"user_id": "", "kind": "fast"})),
            400,
        ),
        (
            "POST /v1/check",
            Some(json!({"user_id": "o", "kind": "fast"})),
            200,
        ),
        ("POST /v1/refund", Some(json!({"request_id": "r1"})), 200),
        ("POST /v1/refund", Some(json!({"request_id": "r1"})), 409),
        ("POST /v1/refund", Some(json!({"request_id": "nope"})), 404),
        ("GET /v1/users/o/usage", None, 200),
        (
            "PUT /admin/v1/plans/team",
            Some(json!({"limits": {"fast": 5, "premium": null}})),
            200,
        ),
        ("PUT /admin/v1/users/o", Some(json!({"plan": "team"})), 200),
        ("PUT /admin/v1/users/o", Some(json!({"plan": "gold"})), 400),
        (
            "POST /admin/v1/users/o/simulate",
            Some(json!({"kind": "fast", "count": 2})),
            200,
        ),
        ("POST /admin/v1/users/o/sync", None, 200),
        ("POST /admin/v1/sync", None, 200),
        (
            "POST /v1/consume/batch",
            Some(
                json!({"events": [{"user_id": "o", "kind": "fast"}, {"user_id": "o", "kind": "nope"}]}),
            ),
            200,
        ),
        ("POST /v1/consume/batch", Some(json!({"events": []})), 400),
        ("GET /admin/v1/users?sort=used&order=desc", None, 200),
        ("GET /admin/v1/users?page=0", None, 400),
        ("GET /admin/v1/status", None, 200),
        ("GET /admin/v1/alerts", None, 200),
        ("GET /admin/v1/users/o/diagnose", None, 200),
        ("POST /admin/v1/users/o/reset", None, 200),
        ("POST /admin/v1/stats/reset", None, 200),
        ("POST /admin/v1/cache/evict", None, 200),
        ("GET /healthz", None, 200),
        ("GET /readyz", None, 200),
    ];
    let mut described = std::collections::BTreeSet::new();
    for (call, body, want) in calls {
        let (method, url) = call.split_once(' ').unwrap();
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let path = template(&doc, url);
        let (status, v) = app
            .request(method.clone(), url, body.map(|b| b.to_string()), None)
            .await;
        assert_eq!(status, want, "{method} {url}: {v}");
        let op = &doc["paths"][path][method.as_str().to_lowercase()];
        assert!(op.is_object(), "{method} {path} is not described");
        let schema = &op["responses"][status.to_string()]["content"]["application/json"]["schema"];
        assert!(
            schema.is_object(),
            "{method} {path} does not describe status {status}"
        );
        if let Err(e) = validate(&doc, schema, &v, &format!("{method} {url} {status}")) {
            panic!("{e}");
        }
        described.insert((path, method.to_string()));
    }
    // Every JSON operation of the document was exercised above.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (m, op) in ops.as_object().unwrap() {
            let json_op = op["responses"]["200"]["content"]
                .get("application/json")
                .is_some();
            if json_op && path != "/openapi.json" {
                assert!(
                    described.contains(&(path.as_str(), m.to_uppercase())),
                    "{m} {path} is never exercised against its schema"
                );
            }
        }
    }
}
