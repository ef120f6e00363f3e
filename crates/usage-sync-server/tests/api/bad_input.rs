//! Every kind of bad input gets a 4xx with the error shape and a stable
//! code, and changes nothing.

use reqwest::Method;
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn bad_consume_bodies_are_rejected_without_any_state_change() {
    let app = spawn_app().await;
    let long = "x".repeat(129);
    let ok128 = "y".repeat(128);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "malformed JSON",
            r#"{"user_id": "u", "kind": "#.into(),
            400,
            "invalid_request",
        ),
        ("not an object", "[1, 2]".into(), 400, "invalid_request"),
        ("empty body", "".into(), 400, "invalid_request"),
        (
            "missing user_id",
            json!({"kind": "fast"}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "missing kind",
            json!({"user_id": "u"}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "user_id wrong type",
            json!({"user_id": 5, "kind": "fast"}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "kind wrong type",
            json!({"user_id": "u", "kind": ["fast"]}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "amount as string",
            json!({"user_id": "u", "kind": "fast", "amount": "1"}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "empty user_id",
            json!({"user_id": "", "kind": "fast"}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "129-byte user_id",
            json!({"user_id": long, "kind": "fast"}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "control char in user_id",
            json!({"user_id": "a\u{0007}b", "kind": "fast"}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "bidi override in user_id",
            json!({"user_id": "admin\u{202E}gnp", "kind": "fast"}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "line separator in request_id",
            json!({"user_id": "u", "kind": "fast", "request_id": "r\u{2028}1"}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "empty request_id",
            json!({"user_id": "u", "kind": "fast", "request_id": ""}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "129-byte request_id",
            json!({"user_id": "u", "kind": "fast", "request_id": long}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "control char in request_id",
            json!({"user_id": "u", "kind": "fast", "request_id": "r\n1"}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "request_id wrong type",
            json!({"user_id": "u", "kind": "fast", "request_id": 7}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "amount 0",
            json!({"user_id": "u", "kind": "fast", "amount": 0}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "negative amount",
            json!({"user_id": "u", "kind": "fast", "amount": -3}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "fractional amount",
            r#"{"user_id": "u", "kind": "fast", "amount": 1.5}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "amount in float notation",
            r#"{"user_id": "u", "kind": "fast", "amount": 1e3}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "amount over 1e9",
            json!({"user_id": "u", "kind": "fast", "amount": 1_000_000_001u64}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "amount overflowing i64",
            r#"{"user_id": "u", "kind": "fast", "amount": 99999999999999999999}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "unknown kind",
            json!({"user_id": "u", "kind": "slow"}).to_string(),
            400,
            "unknown_kind",
        ),
        (
            "unknown field",
            json!({"user_id": "u", "kind": "fast", "ammount": 5}).to_string(),
            400,
            "invalid_request",
        ),
        (
            "oversized body",
            json!({"user_id": "u", "kind": "fast", "pad": "p".repeat(70 * 1024)}).to_string(),
            413,
            "payload_too_large",
        ),
    ];
    for (name, body, status, code) in &cases {
        for path in ["/v1/consume", "/v1/check"] {
            let (s, v) = app.post_raw(path, body.clone()).await;
            assert_eq!(s, *status, "{name} on {path}: {v}");
            assert_eq!(v["error"]["code"], json!(code), "{name} on {path}: {v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{name}: {v}"
            );
        }
    }
    // A valid 128-byte id is fine (the boundary).
    let (s, _) = app
        .post("/v1/check", &json!({"user_id": ok128, "kind": "fast"}))
        .await;
    assert_eq!(s, 200);
    // Nothing was counted, loaded or remembered.
    assert_eq!(app.usage("u").await["kinds"]["fast"]["used"], json!(0));
    assert_eq!(app.engine.ledger_figures().request_ids_remembered, 0);
    assert_eq!(app.engine.ledger_figures().totals.pending, 0);
    app.sync_all().await;
    assert_eq!(app.db("u", "fast").await, 0);
}

#[tokio::test]
async fn bad_refunds_and_paths() {
    let app = spawn_app().await;
    for (body, status, code) in [
        (json!({}), 400, "invalid_request"),
        (json!({"request_id": ""}), 400, "invalid_request"),
        (json!({"request_id": 5}), 400, "invalid_request"),
        (
            json!({"request_id": "r", "amount": 1}),
            400,
            "invalid_request",
        ),
        (
            json!({"request_id": "r", "user_id": ""}),
            400,
            "invalid_request",
        ),
        (
            json!({"request_id": "r", "user_id": 7}),
            400,
            "invalid_request",
        ),
        (json!({"request_id": "unknown"}), 404, "unknown_request"),
    ] {
        let (s, v) = app.post("/v1/refund", &body).await;
        assert_eq!(
            (s, v["error"]["code"].as_str().unwrap()),
            (status, code),
            "{body}"
        );
    }
    let long = "z".repeat(129);
    let (s, v) = app.get(&format!("/v1/users/{long}/usage")).await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (400, json!("invalid_request"))
    );
    let (s, v) = app.get("/v1/users/a%01b/usage").await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (400, json!("invalid_request"))
    );
    let (s, v) = app.get("/v2/whatever").await;
    assert_eq!((s, v["error"]["code"].clone()), (404, json!("not_found")));
    let (s, v) = app.request(Method::DELETE, "/v1/consume", None, None).await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (405, json!("invalid_request"))
    );
    let (s, v) = app.request(Method::GET, "/v1/consume", None, None).await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (405, json!("invalid_request"))
    );
}

#[tokio::test]
async fn bad_admin_input_changes_nothing() {
    let app = spawn_app().await;
    for (path, body, status, code) in [
        (
            "/admin/v1/plans/free",
            json!({"limits": {"fast": -1}}),
            400,
            "invalid_request",
        ),
        (
            "/admin/v1/plans/free",
            json!({"limits": {"fast": 1.5}}),
            400,
            "invalid_request",
        ),
        (
            "/admin/v1/plans/free",
            json!({"limits": {"slow": 5}}),
            400,
            "unknown_kind",
        ),
        (
            "/admin/v1/plans/free",
            json!({"limits": {"fast": 5}, "period": "weekly"}),
            400,
            "invalid_request",
        ),
        (
            "/admin/v1/plans/free",
            json!({"period": "daily"}),
            400,
            "invalid_request",
        ),
        (
            "/admin/v1/plans/bad%20name",
            json!({"limits": {"fast": 5}}),
            400,
            "invalid_request",
        ),
        (
            "/admin/v1/users/u",
            json!({"plan": "gold"}),
            400,
            "invalid_request",
        ),
        ("/admin/v1/users/u", json!({}), 400, "invalid_request"),
        (
            "/admin/v1/users/u",
            json!({"limits": {"fast": "many"}}),
            400,
            "invalid_request",
        ),
    ] {
        let (s, v) = app
            .request(Method::PUT, path, Some(body.to_string()), None)
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str().unwrap_or("?")),
            (status, code),
            "{path} {body}: {v}"
        );
    }
    let v = app.usage("u").await;
    assert_eq!(
        (v["plan"].clone(), v["kinds"]["fast"]["limit"].clone()),
        (json!("free"), json!(50))
    );
}
