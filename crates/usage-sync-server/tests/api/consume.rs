use std::time::Duration;

use serde_json::json;

use crate::helpers::{eventually, pick, spawn_app, spawn_app_with};

#[tokio::test]
async fn consume_answers_with_the_documented_fields() {
    let app = spawn_app().await;
    let (s, v) = app
        .post(
            "/v1/consume",
            &json!({"user_id": "u1", "kind": "fast", "amount": 3, "request_id": "r-1"}),
        )
        .await;
    assert_eq!(s, 200);
    let period = v["period_start"].as_str().unwrap().to_owned();
    assert!(period.ends_with("-01T00:00:00.000Z"), "{period}");
    assert_eq!(
        v,
        json!({"allowed": true, "deduplicated": false, "user_id": "u1", "kind": "fast", "amount": 3,
               "used": 3, "limit": 50, "remaining": 47, "period_start": period})
    );
    // amount defaults to 1
    let (_, v) = app
        .post("/v1/consume", &json!({"user_id": "u1", "kind": "fast"}))
        .await;
    assert_eq!(pick(&v, &["amount", "used"]), json!([1, 4]));
}

#[tokio::test]
async fn over_the_limit_is_429_with_the_same_fields_and_an_error() {
    let app = spawn_app().await;
    let (s, _) = app.consume("u", "premium", 10).await;
    assert_eq!(s, 200);
    let (s, v) = app.consume("u", "premium", 1).await;
    assert_eq!(s, 429);
    assert_eq!(v["allowed"], json!(false));
    assert_eq!(v["used"], json!(10));
    assert_eq!(v["remaining"], json!(0));
    assert_eq!(v["limit"], json!(10));
    assert_eq!(v["error"]["code"], json!("limit_exceeded"));
    assert_eq!(app.usage("u").await["kinds"]["premium"]["used"], json!(10));
}

#[tokio::test]
async fn unlimited_reports_null_limit_and_remaining() {
    let app = spawn_app().await;
    let (s, _) = app
        .put(
            "/admin/v1/plans/free",
            &json!({"limits": {"premium": 10, "fast": null}}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = app.consume("u", "fast", 1_000_000_000).await;
    assert_eq!(s, 200);
    assert_eq!(pick(&v, &["limit", "remaining"]), json!([null, null]));
}

#[tokio::test]
async fn check_never_counts() {
    let app = spawn_app().await;
    app.consume("u", "premium", 9).await;
    let (s, v) = app
        .post(
            "/v1/check",
            &json!({"user_id": "u", "kind": "premium", "amount": 2}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        pick(&v, &["allowed", "used", "remaining"]),
        json!([false, 9, 1])
    );
    assert!(v.get("error").is_none() && v.get("deduplicated").is_none());
    let (_, v) = app
        .post("/v1/check", &json!({"user_id": "u", "kind": "premium"}))
        .await;
    assert_eq!(v["allowed"], json!(true));
    assert_eq!(app.usage("u").await["kinds"]["premium"]["used"], json!(9));
}

#[tokio::test]
async fn dedup_returns_the_original_decision_and_refund_reverses_once() {
    let app = spawn_app().await;
    let body = json!({"user_id": "u", "kind": "fast", "amount": 2, "request_id": "req-7"});
    let (_, first) = app.post("/v1/consume", &body).await;
    app.consume("u", "fast", 1).await;
    let (s, again) = app.post("/v1/consume", &body).await;
    assert_eq!(s, 200);
    assert_eq!(again["deduplicated"], json!(true));
    assert_eq!(
        again["used"], first["used"],
        "original decision, not a new one"
    );
    assert_eq!(app.usage("u").await["kinds"]["fast"]["used"], json!(3));

    let (s, v) = app
        .post("/v1/refund", &json!({"request_id": "req-7"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        pick(&v, &["refunded", "used", "kind"]),
        json!([2, 1, "fast"])
    );
    let (s, v) = app
        .post("/v1/refund", &json!({"request_id": "req-7"}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (409, json!("already_refunded"))
    );
    let (s, v) = app
        .post("/v1/refund", &json!({"request_id": "never-seen"}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (404, json!("unknown_request"))
    );
    app.sync_all().await;
    assert_eq!(app.db("u", "fast").await, 1);
}

#[tokio::test]
async fn usage_of_an_unknown_user_is_zero_on_the_default_plan() {
    let app = spawn_app().await;
    let v = app.usage("nobody").await;
    assert_eq!(v["plan"], json!("free"));
    assert_eq!(
        v["kinds"],
        json!({
            "fast": {"persisted": 0, "pending": 0, "used": 0, "limit": 50, "remaining": 50},
            "premium": {"persisted": 0, "pending": 0, "used": 0, "limit": 10, "remaining": 10},
        })
    );
    assert_eq!(
        pick(&v, &["last_sync_at", "last_activity_at"]),
        json!([null, null])
    );
    // Reading usage does not load the user into memory.
    assert_eq!(app.engine.ledger_figures().users_resident, 0);
}

#[tokio::test]
async fn concurrent_http_consumes_reach_the_database_exactly() {
    let app = spawn_app().await;
    let (s, _) = app
        .put(
            "/admin/v1/plans/free",
            &json!({"limits": {"premium": null, "fast": null}}),
        )
        .await;
    assert_eq!(s, 200);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = app.client.clone();
        let url = format!("{}/v1/consume", app.address);
        tasks.push(tokio::spawn(async move {
            let kind = if i % 4 == 3 { "premium" } else { "fast" };
            let r = client
                .post(url)
                .body(json!({"user_id": "hot", "kind": kind}).to_string())
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let v = app.usage("hot").await;
    assert_eq!(
        (
            v["kinds"]["fast"]["pending"].clone(),
            v["kinds"]["premium"]["pending"].clone()
        ),
        (json!(150), json!(50))
    );
    let r = app.sync_all().await;
    assert_eq!(
        r,
        json!({"checked": 1, "flushed_users": 1, "flushed_units": 200})
    );
    assert_eq!(
        (app.db("hot", "fast").await, app.db("hot", "premium").await),
        (150, 50)
    );
    let v = app.usage("hot").await;
    assert_eq!(
        pick(&v["kinds"]["fast"], &["persisted", "pending"]),
        json!([150, 0])
    );
    assert!(v["last_sync_at"].is_string());
}

#[tokio::test]
async fn threshold_flushes_on_its_own() {
    let app = spawn_app_with(&[("USAGE_SYNC_THRESHOLD", "5")]).await;
    for _ in 0..5 {
        app.consume("t", "fast", 1).await;
    }
    let landed = eventually(Duration::from_secs(10), || async {
        app.db("t", "fast").await == 5
    })
    .await;
    assert!(landed, "threshold flush did not reach the database");
    // The flush task records its statistics just after the commit.
    let threshold = || async {
        app.engine
            .stats()
            .trigger(usage_sync_core::Trigger::Threshold)
            .units
            == 5
    };
    assert!(eventually(Duration::from_secs(20), threshold).await);
}

#[tokio::test]
async fn graceful_stop_flushes_everything() {
    let app = spawn_app().await;
    for i in 0..30 {
        app.consume(&format!("u{i}"), "fast", 2).await;
    }
    let db = app.db_path.clone();
    let (report, _dir) = app.stop().await;
    assert_eq!((report.flushed_units, report.remaining_units), (60, 0));
    assert_eq!(crate::helpers::db_total(&db, "u29", "fast").await, 2);
}

#[tokio::test]
async fn a_batch_decides_each_event_in_order() {
    let app = crate::helpers::spawn_app().await;
    // free plan: premium 10.
    let (s, v) = app
        .post(
            "/v1/consume/batch",
            &json!({"events": [
                {"user_id": "b1", "kind": "premium", "amount": 9, "request_id": "e1"},
                {"user_id": "b1", "kind": "premium", "amount": 2},
                {"user_id": "b1", "kind": "nope"},
                {"user_id": "b1", "kind": "premium", "amount": 9, "request_id": "e1"},
                {"user_id": "b1", "kind": "premium", "amount": 0},
                {"user_id": "b2", "kind": "fast"},
            ]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let r = v["results"].as_array().unwrap();
    let statuses: Vec<u64> = r.iter().map(|x| x["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [200, 429, 400, 200, 400, 200]);
    assert_eq!(r[0]["used"], json!(9));
    assert_eq!(pick(&r[1], &["allowed", "remaining"]), json!([false, 1]));
    assert_eq!(r[2]["error"]["code"], json!("unknown_kind"));
    assert_eq!(pick(&r[3], &["deduplicated", "used"]), json!([true, 9]));
    assert_eq!(r[4]["error"]["code"], json!("invalid_request"));
    assert_eq!(r[5]["user_id"], json!("b2"));
    app.sync_all().await;
    assert_eq!(app.db("b1", "premium").await, 9);
    assert_eq!(app.db("b2", "fast").await, 1);
}

/// Batch events are parsed borrowing from the body; strings with JSON
/// escapes cannot be borrowed and must still be decoded, and the answer
/// must escape what it echoes.
#[tokio::test]
async fn a_batch_decodes_escaped_strings_and_escapes_its_answer() {
    let app = crate::helpers::spawn_app().await;
    let body = r#"{"events": [
        {"user_id": "e\u0031", "kind": "f\u0061st", "request_id": "r\"1"},
        {"user_id": "e1", "kind": "fast", "request_id": "r\u00221"},
        {"user_id": "q\"\\z", "kind": "fast", "amount": 3}
    ]}"#;
    let (s, v) = app.post_raw("/v1/consume/batch", body.to_owned()).await;
    assert_eq!(s, 200, "{v}");
    let r = v["results"].as_array().unwrap();
    assert_eq!(
        pick(&r[0], &["user_id", "kind", "used"]),
        json!(["e1", "fast", 1])
    );
    // The same request id, written with another escape: deduplicated.
    assert_eq!(pick(&r[1], &["deduplicated", "used"]), json!([true, 1]));
    assert_eq!(pick(&r[2], &["user_id", "used"]), json!(["q\"\\z", 3]));
    app.sync_all().await;
    assert_eq!(app.db("e1", "fast").await, 1);
    assert_eq!(app.db("q\"\\z", "fast").await, 3);
}

#[tokio::test]
async fn a_full_batch_counts_exactly_and_bad_envelopes_count_nothing() {
    let app = crate::helpers::spawn_app().await;
    let (s, _) = app
        .put(
            "/admin/v1/plans/free",
            &json!({"limits": {"premium": 10, "fast": null}}),
        )
        .await;
    assert_eq!(s, 200);
    let events: Vec<_> = (0..1000)
        .map(|i| json!({"user_id": format!("f{}", i % 7), "kind": "fast", "amount": 2}))
        .collect();
    let (s, v) = app
        .post("/v1/consume/batch", &json!({"events": events}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["results"].as_array().unwrap().len(), 1000);
    // Unlimited: `limit` and `remaining` are present and null, exactly as
    // `/v1/consume` answers, not left out.
    let first = v["results"][0].as_object().unwrap();
    assert_eq!(
        (first.get("limit"), first.get("remaining")),
        (Some(&json!(null)), Some(&json!(null)))
    );
    assert!(
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == json!(200))
    );
    app.sync_all().await;
    let mut total = 0;
    for u in 0..7 {
        total += app.db(&format!("f{u}"), "fast").await;
    }
    assert_eq!(total, 2000);

    let too_many: Vec<_> = (0..1001)
        .map(|_| json!({"user_id": "x", "kind": "fast"}))
        .collect();
    for (body, status, code) in [
        (json!({"events": []}), 400, "invalid_request"),
        (json!({"events": too_many}), 400, "invalid_request"),
        (json!({"events": "nope"}), 400, "invalid_request"),
        (
            json!([{"user_id": "x", "kind": "fast"}]),
            400,
            "invalid_request",
        ),
        (
            json!({"events": [{"user_id": "x", "kind": "fast", "colour": 1}]}),
            400,
            "invalid_request",
        ),
    ] {
        let (s, v) = app.post("/v1/consume/batch", &body).await;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (status, json!(code)),
            "{body}"
        );
    }
    let huge = format!(
        "{{\"events\": [{{\"user_id\": \"{}\", \"kind\": \"fast\"}}]}}",
        "x".repeat(1024 * 1024)
    );
    let (s, v) = app.post_raw("/v1/consume/batch", huge).await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (413, json!("payload_too_large"))
    );
    assert_eq!(
        app.usage("x").await["kinds"]["fast"]["used"],
        json!(0),
        "nothing counted"
    );
}

/// A request id belongs to the (user, kind, amount) of its first use:
/// reused by another user, or with another kind or amount, it is a 409
/// `request_id_conflict` that counts nothing, in `/v1/consume` and in a
/// batch; a refund naming another user is refused the same way.
#[tokio::test]
async fn a_request_id_reused_for_another_request_is_a_409_that_counts_nothing() {
    let app = spawn_app().await;
    let put = json!({"limits": {"premium": 10, "fast": 50}, "period": "monthly"});
    assert_eq!(app.put("/admin/v1/plans/free", &put).await.0, 200);
    for _ in 0..10 {
        app.consume("bob", "premium", 1).await;
    }
    let alice = json!({"user_id": "alice", "kind": "premium", "amount": 1, "request_id": "r-1"});
    assert_eq!(app.post("/v1/consume", &alice).await.0, 200);
    // bob, at 10 of 10, borrows alice's id with another amount.
    let (s, v) = app
        .post(
            "/v1/consume",
            &json!({"user_id": "bob", "kind": "premium", "amount": 5, "request_id": "r-1"}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (409, json!("request_id_conflict")),
        "{v}"
    );
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("another user_id") && !msg.contains("alice"),
        "{msg}"
    );
    // alice herself with another amount, or another kind.
    let (s, v) = app
        .post(
            "/v1/consume",
            &json!({"user_id": "alice", "kind": "premium", "amount": 2, "request_id": "r-1"}),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("amount 2 (first used for 1)")
    );
    let (s, v) = app
        .post(
            "/v1/consume/batch",
            &json!({"events": [
                {"user_id": "alice", "kind": "fast", "request_id": "r-1"},
                {"user_id": "alice", "kind": "premium", "request_id": "r-1"},
                {"user_id": "bob", "kind": "premium", "request_id": "r-1"},
            ]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let r = &v["results"];
    assert_eq!(
        (r[0]["status"].clone(), r[0]["error"]["code"].clone()),
        (json!(409), json!("request_id_conflict"))
    );
    assert_eq!(pick(&r[1], &["status", "deduplicated"]), json!([200, true]));
    assert_eq!(r[2]["error"]["code"], json!("request_id_conflict"));
    // bob cannot refund alice's request by naming himself.
    let (s, v) = app
        .post(
            "/v1/refund",
            &json!({"request_id": "r-1", "user_id": "bob"}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (409, json!("request_id_conflict"))
    );
    let usage = |u: &'static str| {
        let app = &app;
        async move { app.usage(u).await["kinds"].clone() }
    };
    assert_eq!(usage("alice").await["premium"]["used"], json!(1));
    assert_eq!(usage("bob").await["premium"]["used"], json!(10));
    assert_eq!(usage("alice").await["fast"]["used"], json!(0));
    let (s, v) = app
        .post(
            "/v1/refund",
            &json!({"request_id": "r-1", "user_id": "alice"}),
        )
        .await;
    assert_eq!((s, v["refunded"].clone()), (200, json!(1)), "{v}");
    app.sync_all().await;
    assert_eq!(
        (
            app.db("alice", "premium").await,
            app.db("bob", "premium").await
        ),
        (0, 10)
    );
}

/// A user at the limit, moved to another plan and back, is still at the
/// limit: the period's count comes from the store, never from a fresh 0.
#[tokio::test]
async fn a_plan_switched_back_keeps_the_period_count() {
    let app = spawn_app().await;
    let daily = json!({"limits": {"premium": 10, "fast": 50}, "period": "daily"});
    assert_eq!(app.put("/admin/v1/plans/day", &daily).await.0, 200);
    for _ in 0..10 {
        assert_eq!(app.consume("flip", "premium", 1).await.0, 200);
    }
    assert_eq!(app.consume("flip", "premium", 1).await.0, 429);
    for flush_first in [true, false] {
        if flush_first {
            app.sync_all().await;
        }
        for plan in ["day", "free"] {
            let (s, v) = app
                .put("/admin/v1/users/flip", &json!({"plan": plan}))
                .await;
            assert_eq!(s, 200, "{v}");
        }
        assert_eq!(
            app.usage("flip").await["kinds"]["premium"]["used"],
            json!(10),
            "flushed first: {flush_first}"
        );
        let (s, v) = app.consume("flip", "premium", 1).await;
        assert_eq!((s, v["used"].clone()), (429, json!(10)), "{v}");
    }
    app.sync_all().await;
    assert_eq!(app.db("flip", "premium").await, 10);
}

/// Limits are stored as signed 64-bit counters: anything larger is a 400,
/// never a silent "unlimited" or a limit no consume can meet.
#[tokio::test]
async fn limits_above_i64_max_are_refused() {
    let app = spawn_app().await;
    for limit in [json!(9223372036854775808u64), json!(u64::MAX)] {
        let (s, v) = app
            .put(
                "/admin/v1/plans/huge",
                &json!({"limits": {"premium": limit, "fast": 1}, "period": "monthly"}),
            )
            .await;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (400, json!("invalid_request")),
            "{v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("9223372036854775807")
        );
        let (s, v) = app
            .put(
                "/admin/v1/users/big",
                &json!({"limits": {"premium": limit}}),
            )
            .await;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (400, json!("invalid_request")),
            "{v}"
        );
    }
    // Nothing was created by the refused requests.
    assert_eq!(
        app.put("/admin/v1/users/big", &json!({"plan": "huge"}))
            .await
            .0,
        400
    );
    let max =
        json!({"limits": {"premium": 9223372036854775807i64, "fast": 1}, "period": "monthly"});
    assert_eq!(app.put("/admin/v1/plans/huge", &max).await.0, 200);
    assert_eq!(
        app.put("/admin/v1/users/big", &json!({"plan": "huge"}))
            .await
            .0,
        200
    );
    let (s, v) = app.consume("big", "premium", 1000).await;
    assert_eq!(
        (s, v["remaining"].clone()),
        (200, json!(9223372036854774807i64)),
        "{v}"
    );
}

/// A denial says why: the limit reached, or more asked for than remains.
#[tokio::test]
async fn a_429_says_whether_the_limit_is_reached_or_the_amount_too_large() {
    let app = spawn_app().await;
    let (s, v) = app.consume("why", "premium", 11).await;
    assert_eq!((s, v["used"].clone()), (429, json!(0)), "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("11 premium units asked for, but only 10 of the 10"),
        "{m}"
    );
    assert_eq!(app.consume("why", "premium", 10).await.0, 200);
    let (s, v) = app.consume("why", "premium", 1).await;
    assert_eq!(s, 429);
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("limit of 10 premium units for this period reached"),
        "{m}"
    );
}

/// `USAGE_SYNC_MAX_REQUEST_IDS` bounds the remembered ids (kept per shard
/// of the table, 64 shards: a bound of 1 remembers at most 64). Past it a
/// consume with a new id is a 503 that counts nothing; a repeat of a
/// remembered id and a consume without an id are served; the metrics say
/// how full the table is.
#[tokio::test]
async fn past_the_request_id_bound_a_new_id_is_a_503_that_counts_nothing() {
    let app = spawn_app_with(&[("USAGE_SYNC_MAX_REQUEST_IDS", "1")]).await;
    let (mut accepted, mut refused) = (Vec::new(), 0u64);
    for i in 0..65 {
        let body = json!({"user_id": "u", "kind": "fast", "request_id": format!("r-{i}")});
        let (s, v) = app.post("/v1/consume", &body).await;
        match s {
            200 => accepted.push(format!("r-{i}")),
            503 => {
                assert_eq!(v["error"]["code"], json!("unavailable"), "{v}");
                let msg = v["error"]["message"].as_str().unwrap();
                assert!(msg.contains("USAGE_SYNC_MAX_REQUEST_IDS"), "{msg}");
                refused += 1;
            }
            _ => panic!("{s} {v}"),
        }
    }
    // 65 ids into at most 64 places: at least one was refused.
    assert!(refused >= 1 && accepted.len() <= 64, "{refused} refused");
    let used = accepted.len() as u64;
    assert_eq!(app.usage("u").await["kinds"]["fast"]["used"], json!(used));
    let repeat = json!({"user_id": "u", "kind": "fast", "request_id": accepted[0]});
    let (s, v) = app.post("/v1/consume", &repeat).await;
    assert_eq!((s, v["deduplicated"].clone()), (200, json!(true)), "{v}");
    assert_eq!(app.consume("u", "fast", 1).await.0, 200);
    assert_eq!(
        app.usage("u").await["kinds"]["fast"]["used"],
        json!(used + 1)
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(&format!("usage_sync_request_ids_remembered {used}\n"))
            && metrics.contains("usage_sync_request_ids_limit 1\n"),
        "{metrics}"
    );
    app.sync_all().await;
    assert_eq!(app.db("u", "fast").await, used.cast_signed() + 1);
}
