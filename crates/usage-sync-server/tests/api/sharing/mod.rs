//! Several instances of the real binary sharing one PostgreSQL and one
//! Redis: the limit holds across them exactly, in strict (`redis`) and
//! `lease` mode; Redis outages fall back as documented; Redis Cluster works.
//!
//! The three-instance tests use the machine's Redis (`USAGE_SYNC_TEST_REDIS_URL`,
//! default `redis://127.0.0.1:6379`) under a key prefix of their own; the
//! outage and cluster tests start private `redis-server` processes so they
//! can kill them.

mod fixtures;

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use usage_sync_store::testing::TempDatabase;

use crate::helpers::eventually;
use fixtures::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_in_redis_mode_admit_exactly_the_limit() {
    let Some(setup) = setup(40).await else { return };
    let (db, config, prefix) = (&setup.db, &setup.config, &setup.prefix);
    let inst = three_instances(db, config, prefix, &[("USAGE_SYNC_SHARING", "redis")]).await;
    let users: Vec<String> = (0..4).map(|i| format!("s{i}")).collect();

    let admitted = spray(&inst, &users, 400).await;
    for u in &users {
        assert_eq!(admitted.get(u), Some(&40), "user {u}: {admitted:?}");
    }
    same_answer_everywhere(&inst, &users, 40, 40).await;
    // Spent everywhere: every instance denies.
    for i in &inst {
        let (s, v) = i.consume("s0", None).await;
        assert_eq!((s, v["used"].clone()), (429, json!(40)), "{v}");
    }

    // A request id is one decision across instances: the retry on another
    // instance is answered from Redis and counts nothing.
    let (s, v) = inst[0].consume("fresh", Some("rid-1")).await;
    assert_eq!((s, v["used"].clone()), (200, json!(1)), "{v}");
    let (s, v) = inst[1].consume("fresh", Some("rid-1")).await;
    assert_eq!(
        (s, v["deduplicated"].clone(), v["used"].clone()),
        (200, json!(true), json!(1)),
        "{v}"
    );
    // Refunded on a third instance, once.
    let (s, v) = inst[2]
        .send("POST", "/v1/refund", Some(&json!({"request_id": "rid-1"})))
        .await;
    assert_eq!((s, v["refunded"].clone()), (200, json!(1)), "{v}");
    let (s, v) = inst[0]
        .send("POST", "/v1/refund", Some(&json!({"request_id": "rid-1"})))
        .await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (409, json!("already_refunded")),
        "{v}"
    );

    for i in &inst {
        i.sync().await;
    }
    let totals = db_totals(&db.url).await;
    for u in &users {
        assert_eq!(totals.get(u), Some(&40), "database total of {u}");
    }
    assert_eq!(
        totals.get("fresh").copied().unwrap_or(0),
        0,
        "consume + refund"
    );
    // Three instances flushed into the same rows under load: nothing failed.
    for i in &inst {
        let st = i.status().await;
        assert_eq!(st["sync"]["failures"], json!(0), "{st}");
        assert_eq!(st["sharing"]["mode"], json!("redis"));
        assert_eq!(st["sharing"]["redis_errors"], json!(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_in_lease_mode_admit_exactly_the_limit_once_leases_expire() {
    let Some(setup) = setup(40).await else { return };
    let (db, config, prefix) = (&setup.db, &setup.config, &setup.prefix);
    let inst = three_instances(
        db,
        config,
        prefix,
        &[
            ("USAGE_SYNC_SHARING", "lease"),
            ("USAGE_SYNC_LEASE_TTL", "300ms"),
        ],
    )
    .await;
    let users: Vec<String> = (0..4).map(|i| format!("l{i}")).collect();

    let first = spray(&inst, &users, 400).await;
    for u in &users {
        let n = first.get(u).copied().unwrap_or(0);
        assert!(n <= 40, "user {u} admitted {n} > 40");
    }
    // Units stranded in another instance's lease come back when it
    // expires: keep asking until every user has its whole limit.
    let mut admitted = first.clone();
    let mut sent = 400u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let done = loop {
        let pending: Vec<String> = users
            .iter()
            .filter(|u| admitted.get(*u).copied().unwrap_or(0) < 40)
            .cloned()
            .collect();
        if pending.is_empty() {
            break true;
        }
        if std::time::Instant::now() >= deadline {
            break false;
        }
        for (n, u) in pending.iter().enumerate() {
            let (s, _) = inst[n % 3].consume(u, None).await;
            sent += 1;
            if s == 200 {
                *admitted.entry(u.clone()).or_insert(0) += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(done, "not every user reached the limit: {admitted:?}");
    for u in &users {
        assert_eq!(admitted.get(u), Some(&40), "user {u}");
    }
    // Spent: no lease holds units any more, so the shared count is exact.
    same_answer_everywhere(&inst, &users, 40, 40).await;
    // And never more: after the leases expire, everyone is still denied.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for i in &inst {
        for u in &users {
            let (s, v) = i.consume(u, None).await;
            sent += 1;
            assert_eq!(s, 429, "{v}");
        }
    }
    for i in &inst {
        i.sync().await;
    }
    let totals = db_totals(&db.url).await;
    for u in &users {
        assert_eq!(totals.get(u), Some(&40), "database total of {u}");
    }
    // Leasing means far fewer Redis operations than consumes.
    let ops: u64 = {
        let mut ops = 0;
        for i in &inst {
            let st = i.status().await;
            assert_eq!(st["sync"]["failures"], json!(0), "{st}");
            ops += st["sharing"]["redis_operations"].as_u64().unwrap();
        }
        ops
    };
    assert!(ops > 0 && sent > 400);
    // Leasing costs about one Redis operation per lease: 30 consumes of a
    // fresh user on one instance take leases of 10, 10 and 10 (half of
    // what remains, capped at the lease size).
    let before = inst[0].status().await["sharing"]["redis_operations"]
        .as_u64()
        .unwrap();
    for _ in 0..30 {
        assert_eq!(inst[0].consume("quiet", None).await.0, 200);
    }
    let used = inst[0].status().await["sharing"]["redis_operations"]
        .as_u64()
        .unwrap()
        - before;
    // 3 grants, plus a give-back and a re-grant for any lease that
    // expired (300 ms) mid-way on a slow machine.
    assert!(
        (3..=10).contains(&used),
        "{used} Redis operations for 30 consumes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_instance_gives_its_unspent_lease_back_at_once() {
    let Some(setup) = setup(40).await else { return };
    let (db, config, prefix) = (&setup.db, &setup.config, &setup.prefix);
    let redis = system_redis_url();
    // Leases that would outlive the test: only the shutdown gives them back.
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("USAGE_SYNC_DB_POOL_SIZE", "2"),
        ("USAGE_SYNC_CONFIG", config.as_str()),
        ("REDIS_URL", redis.as_str()),
        ("USAGE_SYNC_REDIS_PREFIX", prefix.as_str()),
        ("USAGE_SYNC_SHARING", "lease"),
        ("USAGE_SYNC_LEASE_TTL", "1h"),
    ];
    let a = Instance::start(&env).await;
    let b = Instance::start(&env).await;
    // A's first consume leases 10 units (half of 40 is 20, capped at the
    // lease size) and spends 1.
    assert_eq!(a.consume("g", None).await.0, 200);
    let (s, d) = a.send("GET", "/admin/v1/users/g/diagnose", None).await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["kinds"]["fast"]["lease"]["units"], json!(9), "{d}");
    // B gets the other 30, in leases that shrink as the quota runs out.
    let mut b_admitted = 0;
    while b.consume("g", None).await.0 == 200 {
        b_admitted += 1;
        assert!(b_admitted <= 30);
    }
    assert_eq!(b_admitted, 30);
    // A stops: its 9 unspent units go back to Redis, and B can use them
    // now rather than in an hour.
    a.bin.signal("TERM");
    assert_eq!(a.bin.wait(Duration::from_secs(20)).await, Some(0));
    let mut more = 0;
    while b.consume("g", None).await.0 == 200 {
        more += 1;
        assert!(more <= 9);
    }
    assert_eq!(more, 9);
    b.sync().await;
    assert_eq!(db_totals(&db.url).await.get("g"), Some(&40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_on_one_instance_apply_on_every_instance() {
    let Some(setup) = setup(40).await else { return };
    let (db, config, prefix) = (&setup.db, &setup.config, &setup.prefix);
    let inst = three_instances(db, config, prefix, &[("USAGE_SYNC_SHARING", "redis")]).await;
    for _ in 0..3 {
        assert_eq!(inst[0].consume("a", None).await.0, 200);
    }
    // A lower limit set through instance 1 holds on instance 0 at once.
    let (s, v) = inst[1]
        .send(
            "PUT",
            "/admin/v1/users/a",
            Some(&json!({"limits": {"fast": 5}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let outcomes: Vec<u16> = {
        let mut o = Vec::new();
        for _ in 0..3 {
            o.push(inst[0].consume("a", None).await.0);
        }
        o
    };
    assert_eq!(outcomes, [200, 200, 429]);
    // A reset through instance 2 starts a new period everywhere.
    let (s, v) = inst[2]
        .send("POST", "/admin/v1/users/a/reset", Some(&json!({})))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = inst[0].consume("a", None).await;
    assert_eq!((s, v["used"].clone()), (200, json!(1)), "{v}");
    // A plan change through instance 0 reaches the others within the poll.
    let (s, v) = inst[0]
        .send(
            "PUT",
            "/admin/v1/plans/free",
            Some(&json!({"limits": {"premium": 5, "fast": 2}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let applied = eventually(Duration::from_secs(20), || async {
        let (s, v) = inst[2]
            .send(
                "POST",
                "/v1/check",
                Some(&json!({"user_id": "b", "kind": "fast"})),
            )
            .await;
        s == 200 && v["limit"] == json!(2)
    })
    .await;
    assert!(applied, "the plan change did not reach instance 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_falls_back_as_configured_and_loses_nothing() {
    if !redis_server_installed() {
        return;
    }
    let Some(db) = TempDatabase::create().await else {
        return;
    };
    let mut redis = RedisServer::start(false).await;
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let config = plan_file(dir.path(), 1000);
    let common = [
        ("DATABASE_URL", db.url.as_str()),
        ("USAGE_SYNC_DB_POOL_SIZE", "2"),
        ("USAGE_SYNC_CONFIG", config.as_str()),
        ("REDIS_URL", url.as_str()),
        ("USAGE_SYNC_SHARING", "redis"),
        ("USAGE_SYNC_REDIS_TIMEOUT", "300ms"),
    ];
    let local =
        Instance::start(&[&common[..], &[("USAGE_SYNC_REDIS_FALLBACK", "local")]].concat()).await;
    let deny =
        Instance::start(&[&common[..], &[("USAGE_SYNC_REDIS_FALLBACK", "deny")]].concat()).await;
    let mut acknowledged = 0;
    for i in 0..10 {
        for inst in [&local, &deny] {
            let (s, v) = inst
                .consume("o", Some(&format!("before-{i}-{}", inst.bin.address)))
                .await;
            assert_eq!(s, 200, "{v}");
            acknowledged += 1;
        }
    }

    redis.kill();
    // `local` keeps admitting from its own counts; `deny` refuses.
    for i in 0..10 {
        let (s, v) = local.consume("o", Some(&format!("during-{i}"))).await;
        assert_eq!(s, 200, "{v}");
        acknowledged += 1;
        let (s, v) = deny.consume("o", Some(&format!("during-deny-{i}"))).await;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (503, json!("unavailable")),
            "{v}"
        );
    }
    let st = local.status().await;
    assert_eq!(st["sharing"]["degraded"], json!(true), "{st}");
    assert_eq!(st["sharing"]["units_to_reconcile"], json!(10), "{st}");
    let (_, metrics) = {
        let r = local
            .client
            .get(format!("{}/metrics", local.bin.address))
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    };
    assert!(metrics.contains("usage_sync_redis_up 0"), "{metrics}");

    // Redis comes back (empty: it keeps nothing on disk); both instances
    // recover by themselves.
    redis.restart().await;
    for inst in [&local, &deny] {
        let back = eventually(Duration::from_secs(10), || async {
            inst.status().await["sharing"]["redis_reachable"] == json!(true)
        })
        .await;
        assert!(back, "instance {} did not recover", inst.bin.address);
    }
    for i in 0..5 {
        for inst in [&local, &deny] {
            let (s, v) = inst
                .consume("o", Some(&format!("after-{i}-{}", inst.bin.address)))
                .await;
            assert_eq!(s, 200, "{v}");
            acknowledged += 1;
        }
    }
    local.sync().await;
    deny.sync().await;
    // 20 before, 10 admitted locally during the outage, 10 after.
    assert_eq!(acknowledged, 40);
    assert_eq!(db_totals(&db.url).await.get("o"), Some(&40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mode_works_against_a_three_node_cluster() {
    if !redis_server_installed() {
        return;
    }
    let Some(db) = TempDatabase::create().await else {
        return;
    };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(RedisServer::start(true).await);
    }
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let ok = eventually(Duration::from_secs(20), || async {
        let client = redis::Client::open(nodes[0].url()).unwrap();
        let Ok(mut c) = client.get_multiplexed_async_connection().await else {
            return false;
        };
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        info.contains("cluster_state:ok")
    })
    .await;
    assert!(ok, "the cluster did not form");

    let urls = nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",");
    let dir = tempfile::tempdir().unwrap();
    let config = plan_file(dir.path(), 30);
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("USAGE_SYNC_DB_POOL_SIZE", "2"),
        ("USAGE_SYNC_CONFIG", config.as_str()),
        ("REDIS_URL", urls.as_str()),
        ("USAGE_SYNC_REDIS_CLUSTER", "true"),
        ("USAGE_SYNC_SHARING", "redis"),
    ];
    let inst = vec![Instance::start(&env).await, Instance::start(&env).await];
    // Users spread over the cluster's slots.
    let users: Vec<String> = (0..6).map(|i| format!("c{i}")).collect();
    let admitted = spray(&inst, &users, 300).await;
    for u in &users {
        assert_eq!(admitted.get(u), Some(&30), "user {u}: {admitted:?}");
    }
    let (s, v) = inst[0].consume("cx", Some("crid")).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = inst[1].consume("cx", Some("crid")).await;
    assert_eq!((s, v["deduplicated"].clone()), (200, json!(true)), "{v}");
    let (s, v) = inst[1]
        .send("POST", "/v1/refund", Some(&json!({"request_id": "crid"})))
        .await;
    assert_eq!((s, v["refunded"].clone()), (200, json!(1)), "{v}");
    for i in &inst {
        i.sync().await;
        assert_eq!(i.status().await["sharing"]["redis_errors"], json!(0));
    }
    let totals = db_totals(&db.url).await;
    for u in &users {
        assert_eq!(totals.get(u), Some(&30), "database total of {u}");
    }
    assert_eq!(totals.get("cx").copied().unwrap_or(0), 0);
}

/// Ids full of `{`, `}` and `:` cannot spell another user's keys, and an
/// error on one key never degrades the instance: with fallback `deny`, a
/// degraded instance would answer 503 to everyone. The first crafted id is
/// the one that wrote the victim's counter key in the old key layout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_ids_in_redis_mode_never_fail_other_users() {
    let redis = system_redis_url();
    if !redis_available(&redis).await {
        return;
    }
    let prefix = unique_prefix();
    let one = Instance::start(&[
        ("REDIS_URL", redis.as_str()),
        ("USAGE_SYNC_REDIS_PREFIX", prefix.as_str()),
        ("USAGE_SYNC_REDIS_FALLBACK", "deny"),
    ])
    .await;
    let victim = "a}1:r:zz";
    let (s, v) = one.consume(victim, None).await;
    assert_eq!(s, 200, "{v}");
    let period = usage_sync_core::Timestamp::parse_rfc3339(v["period_start"].as_str().unwrap())
        .unwrap()
        .as_millis();
    let crafted = [
        ("a", format!("zz}}8:c:fast:{period}")),
        ("a", "zz}8:v".to_owned()),
        ("{", "}:c:fast:{".to_owned()),
        ("}", "{:r:}".to_owned()),
        ("a:b}", format!("}}{{5:a:b}}}}:c:fast:{period}")),
    ];
    for round in 0..3 {
        for (user, rid) in &crafted {
            let (s, v) = one.consume(user, Some(rid)).await;
            assert_eq!(s, 200, "{user:?} {rid:?}: {v}");
            assert_eq!(v["deduplicated"], json!(round > 0), "{v}");
        }
        let (s, v) = one.consume(victim, None).await;
        assert_eq!((s, v["used"].clone()), (200, json!(2 + round)), "{v}");
    }
    let metrics = one
        .client
        .get(format!("{}/metrics", one.bin.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("usage_sync_redis_up 1"), "{metrics}");
}
