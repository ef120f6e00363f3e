use reqwest::Method;
use serde_json::json;

use crate::helpers::spawn_app_with;

#[tokio::test]
async fn tokens_guard_their_routes() {
    let app = spawn_app_with(&[
        ("USAGE_SYNC_API_TOKEN", "api-secret"),
        ("USAGE_SYNC_ADMIN_TOKEN", "admin-secret"),
    ])
    .await;
    let consume = json!({"user_id": "u", "kind": "fast"}).to_string();
    for token in [
        None,
        Some("wrong"),
        Some("admin-secret"),
        Some("api-secre"),
        Some("api-secrett"),
    ] {
        let (s, v) = app
            .request(Method::POST, "/v1/consume", Some(consume.clone()), token)
            .await;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (401, json!("unauthorized")),
            "{token:?}"
        );
    }
    let (s, _) = app
        .request(
            Method::POST,
            "/v1/consume",
            Some(consume.clone()),
            Some("api-secret"),
        )
        .await;
    assert_eq!(s, 200);
    // The scheme is case-insensitive (RFC 9110); the token is not.
    for (header, status) in [
        ("bearer api-secret", 200),
        ("BEARER api-secret", 200),
        ("bearer API-SECRET", 401),
        ("Basic api-secret", 401),
    ] {
        let r = app
            .client
            .post(format!("{}/v1/consume", app.address))
            .header("authorization", header)
            .header("content-type", "application/json")
            .body(consume.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{header}");
    }
    let (s, _) = app
        .request(Method::GET, "/v1/users/u/usage", None, Some("api-secret"))
        .await;
    assert_eq!(s, 200);

    let admin_routes = [
        (
            Method::PUT,
            "/admin/v1/plans/free",
            json!({"limits": {"fast": 1}}),
        ),
        (Method::PUT, "/admin/v1/users/u", json!({"plan": "free"})),
        (Method::POST, "/admin/v1/users/u/reset", json!({})),
        (Method::POST, "/admin/v1/users/u/sync", json!({})),
        (Method::POST, "/admin/v1/sync", json!({})),
        (Method::GET, "/admin/v1/status", json!(null)),
        (Method::GET, "/admin/v1/users/u/diagnose", json!(null)),
        (Method::POST, "/admin/v1/stats/reset", json!({})),
        (Method::GET, "/admin/v1/users?page=1", json!(null)),
        (Method::POST, "/admin/v1/cache/evict", json!(null)),
        (
            Method::POST,
            "/admin/v1/users/u/simulate",
            json!({"kind": "fast", "count": 2}),
        ),
        (Method::GET, "/dashboard", json!(null)),
        (Method::GET, "/dashboard?token=wrong", json!(null)),
        (Method::GET, "/dashboard/data/status", json!(null)),
        (Method::GET, "/dashboard/data/users/u/diagnose", json!(null)),
    ];
    for (m, path, body) in &admin_routes {
        for token in [None, Some("api-secret"), Some("wrong")] {
            let (s, v) = app
                .request(m.clone(), path, Some(body.to_string()), token)
                .await;
            assert_eq!(
                (s, v["error"]["code"].clone()),
                (401, json!("unauthorized")),
                "{path} {token:?}"
            );
        }
    }
    // Nothing changed by the refused admin calls.
    assert_eq!(
        app.engine.plans().get("free").unwrap().limits,
        vec![Some(10), Some(50)]
    );
    let (s, _) = app
        .request(
            Method::POST,
            "/admin/v1/sync",
            Some("{}".into()),
            Some("admin-secret"),
        )
        .await;
    assert_eq!(s, 200);
    // The dashboard page takes the admin token as a header, or once as
    // ?token= (a browser cannot send a header when it navigates): that is
    // exchanged for an HttpOnly cookie scoped to /dashboard and a redirect
    // to the page without the token. Its assets hold no data and need none.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = browser
        .get(format!("{}/dashboard?token=admin-secret", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/dashboard");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/dashboard"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(
        !cookie.contains("admin-secret"),
        "the token is not stored as is: {cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    // A GET of `path` by the browser, with one header.
    let get = |path: &str, (name, value): (&str, String)| {
        let url = format!("{}{path}", app.address);
        let request = browser.get(url).header(name, value).send();
        async move { request.await.unwrap() }
    };
    for path in [
        "/dashboard",
        "/dashboard/data/status",
        "/dashboard/data/users/u/diagnose",
    ] {
        let r = get(path, ("cookie", pair.clone())).await;
        assert_eq!(r.status().as_u16(), 200, "{path} with the cookie");
    }
    let forged = ("cookie", "usage_sync_dashboard=00".to_owned());
    let r = get("/dashboard/data/status", forged).await;
    assert_eq!(r.status().as_u16(), 401, "a forged cookie");
    let (s, _) = app
        .request(Method::GET, "/dashboard", None, Some("admin-secret"))
        .await;
    assert_eq!(s, 200);
    // Every dashboard response is hardened for browsers.
    for path in [
        "/dashboard",
        "/dashboard/app.js",
        "/dashboard/uPlot.iife.min.js",
    ] {
        let r = get(path, ("authorization", "Bearer admin-secret".to_owned())).await;
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
    }
    // Probes need no token.
    assert_eq!(app.get("/healthz").await.0, 200);
    let (s, v) = app.get("/readyz").await;
    assert_eq!((s, v["status"].clone()), (200, json!("ready")));
}
