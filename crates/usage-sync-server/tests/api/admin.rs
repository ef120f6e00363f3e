use serde_json::json;

use crate::helpers::spawn_app;

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
