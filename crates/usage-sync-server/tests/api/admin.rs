use serde_json::json;

use crate::helpers::{column, pick, spawn_app};

#[tokio::test]
async fn plans_users_resets_and_syncs() {
    let app = spawn_app().await;
    let (s, v) = app
        .put(
            "/admin/v1/plans/team",
            &json!({"limits": {"premium": 3, "fast": null}, "period": "daily"}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"plan": "team", "period": "daily", "limits": {"premium": 3, "fast": null}})
    );

    let (s, v) = app
        .put(
            "/admin/v1/users/u",
            &json!({"plan": "team", "limits": {"premium": 4}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["plan"], json!("team"));
    assert_eq!(v["kinds"]["premium"]["limit"], json!(4));
    assert!(
        v["period_start"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00.000Z")
    );

    for _ in 0..4 {
        assert_eq!(app.consume("u", "premium", 1).await.0, 200);
    }
    assert_eq!(app.consume("u", "premium", 1).await.0, 429);

    let (s, v) = app.post("/admin/v1/users/u/sync", &json!({})).await;
    assert_eq!((s, v), (200, json!({"user_id": "u", "flushed_units": 4})));
    assert_eq!(app.db("u", "premium").await, 4);

    let (s, v) = app.post("/admin/v1/users/u/reset", &json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(v["kinds"]["premium"]["used"], json!(0));
    assert_eq!(app.consume("u", "premium", 1).await.0, 200);
    let v = app.sync_all().await;
    assert_eq!(
        v,
        json!({"checked": 1, "flushed_users": 1, "flushed_units": 1})
    );
    assert_eq!(
        app.db("u", "premium").await,
        5,
        "4 in the old period + 1 in the new"
    );
}

#[tokio::test]
async fn the_user_list_pages_sorts_filters_and_totals_including_pending() {
    let app = crate::helpers::spawn_app().await;
    // "a" and "b" are flushed, "c" only pending, "d" has a profile only.
    for (u, n) in [("a", 3), ("b", 1)] {
        assert_eq!(app.consume(u, "fast", n).await.0, 200);
    }
    app.sync_all().await;
    assert_eq!(app.consume("c", "fast", 5).await.0, 200);
    assert_eq!(app.consume("c", "premium", 1).await.0, 200);
    let (s, v) = app
        .put("/admin/v1/users/d", &json!({"plan": "premium"}))
        .await;
    assert_eq!(s, 200, "{v}");
    // Evict everyone idle and clean, so "a" and "b" are read from the
    // database: the list must not depend on what is in memory.
    let (s, v) = app.post("/admin/v1/cache/evict", &json!(null)).await;
    assert_eq!(s, 200, "{v}");

    let (s, v) = app.get("/admin/v1/users?sort=used&order=desc").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(column(&v["users"], "user_id"), json!(["c", "a", "b", "d"]));
    assert_eq!(
        v["users"][0]["kinds"]["fast"]["pending"],
        json!(0),
        "flushed by the evict"
    );
    assert_eq!(v["matched"], json!(4));
    assert_eq!(v["totals"]["users"], json!(4));
    assert_eq!(v["totals"]["usage"]["fast"]["used"], json!(9));
    assert_eq!(v["totals"]["usage"]["premium"]["used"], json!(1));
    assert_eq!(
        v["totals"]["users_per_plan"],
        json!({"free": 3, "premium": 1})
    );

    // Pending units count in the list before any flush.
    assert_eq!(app.consume("b", "fast", 10).await.0, 200);
    let (_, v) = app.get("/admin/v1/users?search=b").await;
    assert_eq!(v["matched"], json!(1));
    assert_eq!(v["users"][0]["kinds"]["fast"]["used"], json!(11));
    assert_eq!(v["users"][0]["kinds"]["fast"]["pending"], json!(10));

    // Pages and the plan filter.
    let (_, v) = app.get("/admin/v1/users?limit=2&page=2").await;
    assert_eq!(column(&v["users"], "user_id"), json!(["c", "d"]));
    let (_, v) = app.get("/admin/v1/users?plan=premium").await;
    assert_eq!(v["matched"], json!(1));
    assert_eq!(v["users"][0]["user_id"], json!("d"));

    // Bad queries are a 400 with the usual shape, never a 500.
    for q in [
        "page=0",
        "limit=0",
        "limit=5000",
        "sort=nope",
        "order=sideways",
        "page=x",
        "colour=blue",
    ] {
        let (s, v) = app.get(&format!("/admin/v1/users?{q}")).await;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (400, json!("invalid_request")),
            "{q}: {v}"
        );
    }
}

#[tokio::test]
async fn evict_flushes_first_and_never_drops_pending_units() {
    let app = crate::helpers::spawn_app().await;
    for u in ["e1", "e2", "e3"] {
        assert_eq!(app.consume(u, "fast", 2).await.0, 200);
    }
    let (s, v) = app.post("/admin/v1/cache/evict", &json!(null)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["flushed_units"], json!(6));
    assert_eq!(v["evicted"], json!(3));
    assert_eq!(v["resident_users"], json!(0));
    for u in ["e1", "e2", "e3"] {
        assert_eq!(app.db(u, "fast").await, 2);
    }
    // Reloaded from the database on the next request, with nothing lost.
    let (s, v) = app.consume("e1", "fast", 1).await;
    assert_eq!((s, v["used"].clone()), (200, json!(3)));
    // A user active within idle_seconds stays.
    let (_, v) = app
        .post("/admin/v1/cache/evict?idle_seconds=3600", &json!(null))
        .await;
    assert_eq!(pick(&v, &["evicted", "resident_users"]), json!([0, 1]));
    let (s, v) = app
        .post("/admin/v1/cache/evict?idle_seconds=-1", &json!(null))
        .await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (400, json!("invalid_request"))
    );
}

#[tokio::test]
async fn simulate_is_off_unless_enabled() {
    let app = crate::helpers::spawn_app().await;
    let (s, v) = app
        .post(
            "/admin/v1/users/sim/simulate",
            &json!({"kind": "fast", "count": 3}),
        )
        .await;
    assert_eq!((s, v["error"]["code"].clone()), (404, json!("not_found")));
    assert_eq!(app.usage("sim").await["kinds"]["fast"]["used"], json!(0));

    let app = crate::helpers::spawn_app_with(&[("USAGE_SYNC_ENABLE_SIMULATION", "true")]).await;
    let (s, v) = app
        .post(
            "/admin/v1/users/sim/simulate",
            &json!({"kind": "fast", "count": 52}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // The free plan allows 50 fast units.
    assert_eq!(pick(&v, &["allowed", "denied"]), json!([50, 2]));
    assert_eq!(v["usage"]["kinds"]["fast"]["used"], json!(50));
    for body in [
        json!({"kind": "fast", "count": 0}),
        json!({"kind": "fast", "count": 10001}),
        json!({"kind": "nope", "count": 1}),
    ] {
        let (s, _) = app.post("/admin/v1/users/sim/simulate", &body).await;
        assert!(s == 400, "{body}: {s}");
    }
}
