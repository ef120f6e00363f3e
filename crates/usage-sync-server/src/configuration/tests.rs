use super::*;
use usage_sync::RedisFallback;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A config file holding `text`, in a directory that lives as long as
/// the returned guard.
fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("usage-sync.toml");
    std::fs::write(&f, text).unwrap();
    (dir, f)
}

#[test]
fn development_defaults() {
    let s = load_from(None, &env(&[])).unwrap();
    assert_eq!(s.profile, Profile::Development);
    assert_eq!(s.sync.heartbeat_interval, Duration::from_secs(30));
    assert_eq!(s.sync.check_interval, Duration::from_secs(60));
    assert_eq!(s.sync.force_sync_threshold, 5);
    assert_eq!(s.sync.max_sync_interval, Duration::from_secs(600));
    assert!(s.log.verbose);
    assert_eq!(s.store.database_url, "sqlite://./data/usage-sync.db");
    assert_eq!(
        s.sources["heartbeat_interval"],
        Source::Default(Profile::Development)
    );
}

#[test]
fn sharing_and_simulation_settings() {
    let s = load_from(None, &env(&[])).unwrap();
    assert!(s.sync.sharing.is_none(), "none without REDIS_URL");
    let s = load_from(None, &env(&[("REDIS_URL", "redis://127.0.0.1:6379")])).unwrap();
    let c = s.sync.sharing.unwrap();
    assert_eq!(
        (c.mode, c.fallback, c.lease_size),
        (SharingMode::Redis, RedisFallback::Local, 10)
    );
    assert_eq!(c.lease_ttl, Duration::from_secs(2));
    let s = load_from(
        None,
        &env(&[
            ("REDIS_URL", "redis://a:1,redis://b:2"),
            ("USAGE_SYNC_REDIS_CLUSTER", "true"),
            ("USAGE_SYNC_SHARING", "lease"),
            ("USAGE_SYNC_REDIS_FALLBACK", "deny"),
            ("USAGE_SYNC_LEASE_SIZE", "25"),
        ]),
    )
    .unwrap();
    let c = s.sync.sharing.unwrap();
    assert_eq!(c.urls, ["redis://a:1", "redis://b:2"]);
    assert_eq!(
        (c.mode, c.fallback, c.lease_size, c.cluster),
        (SharingMode::Lease, RedisFallback::Deny, 25, true)
    );
    for bad in [
        vec![("USAGE_SYNC_SHARING", "redis")],
        vec![("USAGE_SYNC_SHARING", "gossip"), ("REDIS_URL", "redis://x")],
        vec![("REDIS_URL", "http://x")],
        vec![("REDIS_URL", "redis://a,redis://b")],
        vec![
            ("REDIS_URL", "redis://x"),
            ("USAGE_SYNC_REDIS_FALLBACK", "maybe"),
        ],
        vec![("REDIS_URL", "redis://x"), ("USAGE_SYNC_LEASE_SIZE", "0")],
    ] {
        assert!(load_from(None, &env(&bad)).is_err(), "{bad:?}");
    }
    let e = load_from(
        None,
        &env(&[
            ("NODE_ENV", "production"),
            ("USAGE_SYNC_API_TOKEN", "api-token-0123456789"),
            ("USAGE_SYNC_ADMIN_TOKEN", "admin-token-0123456789"),
            ("USAGE_SYNC_ENABLE_SIMULATION", "true"),
        ]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("SIMULATION"), "{e}");
}

#[test]
fn tokens_cannot_be_half_set_blank_short_or_shared_in_production() {
    let err = |vars: &[(&str, &str)]| load_from(None, &env(vars)).unwrap_err().to_string();
    let e = err(&[("USAGE_SYNC_API_TOKEN", "only-the-api-one")]);
    assert!(
        e.contains("USAGE_SYNC_ADMIN_TOKEN is not") && e.contains("openssl rand -hex 32"),
        "{e}"
    );
    let e = err(&[("USAGE_SYNC_ADMIN_TOKEN", "only-the-admin-one")]);
    assert!(e.contains("USAGE_SYNC_API_TOKEN is not"), "{e}");
    let e = err(&[
        ("USAGE_SYNC_API_TOKEN", " "),
        ("USAGE_SYNC_ADMIN_TOKEN", "admin-token-0123456789"),
    ]);
    assert!(e.contains("USAGE_SYNC_API_TOKEN is blank"), "{e}");
    let prod = |api: &'static str, admin: &'static str| {
        err(&[
            ("NODE_ENV", "production"),
            ("USAGE_SYNC_API_TOKEN", api),
            ("USAGE_SYNC_ADMIN_TOKEN", admin),
        ])
    };
    let e = prod("short", "admin-token-0123456789");
    assert!(
        e.contains("USAGE_SYNC_API_TOKEN is shorter than 16 bytes"),
        "{e}"
    );
    let e = prod("same-token-0123456789", "same-token-0123456789");
    assert!(e.contains("are the same"), "{e}");
    let e = err(&[("NODE_ENV", "production")]);
    assert!(
        e.contains("USAGE_SYNC_API_TOKEN and USAGE_SYNC_ADMIN_TOKEN")
            && e.contains("openssl rand -hex 32"),
        "{e}"
    );
    // Development accepts short tokens, as long as both are set.
    load_from(
        None,
        &env(&[
            ("USAGE_SYNC_API_TOKEN", "a"),
            ("USAGE_SYNC_ADMIN_TOKEN", "b"),
        ]),
    )
    .unwrap();
}

#[test]
fn production_needs_tokens_and_uses_its_defaults() {
    let e = load_from(None, &env(&[("NODE_ENV", "production")])).unwrap_err();
    assert!(e.to_string().contains("USAGE_SYNC_API_TOKEN"), "{e}");
    let s = load_from(
        None,
        &env(&[
            ("NODE_ENV", "production"),
            ("USAGE_SYNC_API_TOKEN", "api-token-0123456789"),
            ("USAGE_SYNC_ADMIN_TOKEN", "admin-token-0123456789"),
        ]),
    )
    .unwrap();
    assert_eq!(s.sync.heartbeat_interval, Duration::from_secs(120));
    assert_eq!(s.sync.force_sync_threshold, 10);
    assert!(!s.log.verbose);
    assert_eq!(s.log.format, LogFormat::Json);
    // USAGE_SYNC_ENV wins over NODE_ENV.
    let s = load_from(
        None,
        &env(&[
            ("NODE_ENV", "production"),
            ("USAGE_SYNC_ENV", "development"),
        ]),
    )
    .unwrap();
    assert_eq!(s.profile, Profile::Development);
}

#[test]
fn layers_apply_in_order_and_record_their_source() {
    let (_dir, f) =
        config_file("preset = \"large\"\nsync_check_interval = \"7m\"\nforce_sync_threshold = 9\n");
    let s = load_from(Some(&f), &env(&[("USAGE_SYNC_THRESHOLD", "12")])).unwrap();
    assert_eq!(s.preset, Some(Preset::Large));
    assert_eq!(s.sync.heartbeat_interval, Duration::from_secs(60)); // preset
    assert_eq!(
        s.sources["heartbeat_interval"],
        Source::Preset(Preset::Large)
    );
    assert_eq!(s.sync.max_concurrent_syncs, 5); // preset
    assert_eq!(s.sync.check_interval, Duration::from_secs(420)); // file
    assert_eq!(s.sources["sync_check_interval"], Source::File(f.clone()));
    assert_eq!(s.sync.force_sync_threshold, 12); // env beats file
    assert_eq!(
        s.sources["force_sync_threshold"],
        Source::Env("USAGE_SYNC_THRESHOLD")
    );
}

#[test]
fn env_intervals_are_milliseconds() {
    let s = load_from(None, &env(&[("USAGE_SYNC_CHECK_INTERVAL", "300000")])).unwrap();
    assert_eq!(s.sync.check_interval, Duration::from_secs(300));
    let s = load_from(None, &env(&[("ENABLE_VERBOSE_LOGGING", "false")])).unwrap();
    assert!(!s.log.verbose);
}

#[test]
fn redis_url_is_the_source_of_sharing_and_toml_null_gets_a_hint() {
    let s = load_from(None, &env(&[("REDIS_URL", "redis://127.0.0.1:6379")])).unwrap();
    assert_eq!(
        s.sources["sharing"].to_string(),
        s.sources["redis_url"].to_string()
    );
    assert!(s.sources["sharing"].to_string().contains("REDIS_URL"));
    let (_dir, f) = config_file("[plans.free]\nlimits = { premium = 5, fast = null }\n");
    let e = load_from(Some(&f), &env(&[])).unwrap_err().to_string();
    assert!(
        e.contains("write an unlimited limit as \"unlimited\""),
        "{e}"
    );
}

#[test]
fn listen_takes_names_and_typos_are_named() {
    let s = load_from(None, &env(&[("USAGE_SYNC_LISTEN", "localhost:18081")])).unwrap();
    assert_eq!(s.http.listen.port(), 18081);
    assert!(s.http.listen.ip().is_loopback());
    // A misspelt variable is reported with the name it was meant to be.
    let s = load_from(
        None,
        &env(&[
            ("USAGE_SYNC_DURABLITY", "fsync"),
            ("USAGE_SYNC_TEST_X", "1"),
        ]),
    )
    .unwrap();
    assert_eq!(
        s.unknown_env,
        vec![("USAGE_SYNC_DURABLITY".to_owned(), "USAGE_SYNC_DURABILITY")]
    );
    // A level typo would silence the service: refused with the level meant.
    let e = load_from(None, &env(&[("USAGE_SYNC_LOG_LEVEL", "warnn")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("USAGE_SYNC_LOG_LEVEL") && e.contains("did you mean 'warn'"),
        "{e}"
    );
    for ok in ["info", "warn,flush=debug", "usage_sync_server=trace", "OFF"] {
        load_from(None, &env(&[("USAGE_SYNC_LOG_LEVEL", ok)])).unwrap();
    }
}

#[test]
fn invalid_values_name_the_key() {
    for (var, val, key) in [
        ("USAGE_SYNC_CHECK_INTERVAL", "soon", "sync_check_interval"),
        ("USAGE_SYNC_THRESHOLD", "0", "force_sync_threshold"),
        ("USAGE_SYNC_HEARTBEAT_INTERVAL", "0", "heartbeat_interval"),
        ("SYNC_PERFORMANCE_MODE", "turbo", "performance_mode"),
        ("USAGE_SYNC_LISTEN", "localhost", "listen"),
        ("USAGE_SYNC_BATCH_SIZE", "-1", "batch_size"),
        ("ENABLE_USAGE_SYNC", "maybe", "enable_usage_sync"),
    ] {
        let e = load_from(None, &env(&[(var, val)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key) && e.contains(var), "{var}={val}: {e}");
    }
    let e = load_from(None, &env(&[("USAGE_SYNC_PRESET", "huge")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("preset"), "{e}");
}

#[test]
fn file_plans_unknown_keys_and_secret_files() {
    let (dir, f) = config_file(
        "kinds = [\"fast\"]\ndefault_plan = \"open\"\n[plans.open]\nperiod = \"daily\"\nlimits = { fast = \"unlimited\" }\n",
    );
    let s = load_from(Some(&f), &env(&[])).unwrap();
    assert_eq!(s.plans["open"].limits["fast"], None);
    assert_eq!(s.plans["open"].period, PeriodKind::Daily);
    std::fs::write(&f, "heartbeat_intervall = \"1m\"\n").unwrap();
    let e = load_from(Some(&f), &env(&[])).unwrap_err().to_string();
    assert!(e.contains("heartbeat_intervall"), "{e}");
    let tok = dir.path().join("tok");
    std::fs::write(&tok, "s3cret\n").unwrap();
    let s = load_from(
        None,
        &env(&[
            ("USAGE_SYNC_ADMIN_TOKEN_FILE", tok.to_str().unwrap()),
            ("USAGE_SYNC_API_TOKEN", "api"),
        ]),
    )
    .unwrap();
    assert_eq!(s.http.admin_token.unwrap().expose(), "s3cret");
}

#[test]
fn redaction() {
    let s = load_from(
        None,
        &env(&[
            ("USAGE_SYNC_API_TOKEN", "topsecret"),
            ("USAGE_SYNC_ADMIN_TOKEN", "topsecret2"),
        ]),
    )
    .unwrap();
    let shown = format!("{:?}", s.redacted());
    assert!(!shown.contains("topsecret"));
    assert!(format!("{s:?}").contains("Secret(***)") && !format!("{s:?}").contains("topsecret"));
    assert_eq!(
        redact_url("postgres://u:pw@h/db"),
        "postgres://u:<redacted>@h/db"
    );
}

/// docs/configuration.md must list every key and environment variable,
/// so the documentation cannot silently drift from the code.
#[test]
fn the_configuration_doc_lists_every_setting() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/configuration.md"
    ))
    .unwrap();
    for (key, _, vars) in KEYS {
        assert!(
            doc.contains(&format!("`{key}`")),
            "docs/configuration.md misses key {key}"
        );
        for v in *vars {
            assert!(
                doc.contains(&format!("`{v}`")),
                "docs/configuration.md misses {v}"
            );
        }
    }
    for (_, var) in SECRET_FILES {
        assert!(
            doc.contains(&format!("`{var}`")),
            "docs/configuration.md misses {var}"
        );
    }
    for var in ["USAGE_SYNC_ENV", "NODE_ENV", "USAGE_SYNC_PRESET"] {
        assert!(
            doc.contains(&format!("`{var}`")),
            "docs/configuration.md misses {var}"
        );
    }
}

#[test]
fn durations() {
    assert_eq!(format_duration(Duration::from_secs(600)), "10m");
}

#[test]
fn a_file_takes_typed_values_and_its_errors_name_the_key_and_file() {
    let (_dir, f) = config_file(
        "heartbeat_interval = 45000\nenable_usage_sync = false\nbatch_size = 250\nkinds = [\"premium\", \" fast \"]\n",
    );
    let s = load_from(Some(&f), &env(&[])).unwrap();
    assert_eq!(s.sync.heartbeat_interval, Duration::from_secs(45));
    assert!(!s.sync.enabled);
    assert_eq!(s.sync.batch_size, 250);
    assert_eq!(s.kinds, ["premium", "fast"]);
    assert_eq!(s.sources["batch_size"], Source::File(f.clone()));
    for (text, key, says) in [
        ("kinds = [\"a\", 3]\n", "kinds", "expected a string"),
        (
            "batch_size = \"x\"\n",
            "batch_size",
            "'x' is not a whole number",
        ),
        ("lease_ttl = true\n", "lease_ttl", "true is not a duration"),
        ("listen = 8080\n", "listen", "expected a string"),
    ] {
        std::fs::write(&f, text).unwrap();
        let e = load_from(Some(&f), &env(&[])).unwrap_err().to_string();
        let want = format!("invalid value for {key} from file ({})", f.display());
        assert!(e.contains(&want) && e.contains(says), "{text}: {e}");
    }
}

/// A key named like a group would land on the group's table in the
/// layers: the settings table must never have one.
#[test]
fn no_setting_is_named_like_a_group() {
    for (key, _, _) in KEYS {
        assert!(!KEYS.iter().any(|(_, g, _)| g == key), "{key}");
    }
}
