//! The deployment assets: Kubernetes manifests validated against the
//! Kubernetes API schemas (kubernetes-validate from PyPI, strict: unknown
//! fields are errors), the settings they rely on, and the systemd unit
//! checked by systemd-analyze.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// `kubernetes-validate`: $KUBERNETES_VALIDATE, the venv `.ci/run` makes,
/// or PATH.
fn validator() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("KUBERNETES_VALIDATE").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.ci/venv/bin/kubernetes-validate")),
        Some(PathBuf::from("kubernetes-validate")),
    ];
    candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn kubernetes_manifests_are_valid_and_consistent() {
    let Some(validate) = validator() else {
        usage_sync_store::testing::skip("kubernetes-validate not installed; run .ci/run");
        return;
    };
    let dir = deploy_dir().join("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 7, "{files:?}");
    let out = Command::new(&validate)
        .args(["--strict", "-k", "1.34.0"])
        .args(&files)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("passed").count(), 7, "{text}");

    // The validator does reject a broken manifest (so the pass above means
    // something): a misspelt field under strict validation.
    let bad = tempfile::NamedTempFile::with_suffix(".yaml").unwrap();
    std::fs::write(
        bad.path(),
        std::fs::read_to_string(dir.join("pdb.yaml"))
            .unwrap()
            .replace("maxUnavailable", "maxUnavailible"),
    )
    .unwrap();
    let out = Command::new(&validate)
        .args(["--strict", "-k", "1.34.0"])
        .arg(bad.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "a misspelt field must fail");

    // What the issue and the service need from the Deployment.
    let d = std::fs::read_to_string(dir.join("deployment.yaml")).unwrap();
    for needle in [
        "path: /readyz",
        "path: /healthz",
        "cpu: 100m",
        "memory: 256Mi",
        "cpu: 500m",
        "memory: 512Mi",
        "terminationGracePeriodSeconds: 45",
        "mountPath: /var/lib/usage-sync",
        "secretRef",
        "configMapRef",
    ] {
        assert!(d.contains(needle), "deployment.yaml lacks {needle}");
    }
    // The grace period outlasts the shutdown flush deadline.
    let cm = std::fs::read_to_string(dir.join("configmap.yaml")).unwrap();
    assert!(cm.contains("USAGE_SYNC_SHUTDOWN_TIMEOUT: 15s"));
    // Every variable the ConfigMap and Secret set is a real setting.
    let doc = std::fs::read_to_string(deploy_dir().join("../docs/configuration.md")).unwrap();
    let secret = std::fs::read_to_string(dir.join("secret.yaml")).unwrap();
    for line in cm.lines().chain(secret.lines()) {
        let t = line.trim();
        if let Some((k, _)) = t.split_once(':')
            && k.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            && !k.is_empty()
        {
            assert!(
                doc.contains(&format!("`{k}`")),
                "{k} is not a documented setting"
            );
        }
    }
}

#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let unit = std::fs::read_to_string(deploy_dir().join("systemd/usage-sync.service")).unwrap();
    for needle in [
        "DynamicUser=yes",
        "StateDirectory=usage-sync",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=on-failure",
        "TimeoutStopSec=45",
        "USAGE_SYNC_API_TOKEN_FILE=%d/api-token",
    ] {
        assert!(unit.contains(needle), "the unit lacks {needle}");
    }
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        usage_sync_store::testing::skip("systemd-analyze verify: not installed");
        return;
    };
    assert!(probe.status.success());
    // Verify a copy that points at this build's binary (verify checks that
    // ExecStart exists) and tolerates a missing settings file.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("usage-sync.service");
    std::fs::write(
        &copy,
        unit.replace(
            "/usr/local/bin/usage-sync",
            env!("CARGO_BIN_EXE_usage-sync"),
        )
        .replace("EnvironmentFile=/etc", "EnvironmentFile=-/etc"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains("usage-sync.service"),
        "systemd-analyze complains about the unit:\n{err}"
    );
}

/// A lint of the Dockerfile and docker-compose.yml (no image is built
/// here: the machine has no registry): two stages, the final one holding
/// only the binary, running as a non-root user, with a health check the
/// binary itself answers; pinned base images; and a compose file with
/// PostgreSQL, Redis and two instances that do not share a data volume or
/// a port, and refuse to start without tokens.
#[tokio::test]
async fn the_dockerfile_and_compose_file_pass_their_lint() {
    let root = deploy_dir().join("..");
    let docker = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let lines: Vec<&str> = docker
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "a build stage and a runtime stage");
    assert!(froms[0].ends_with(" AS build"), "{}", froms[0]);
    for f in &froms {
        let image = f.split_whitespace().nth(1).unwrap();
        assert!(
            image.contains(':') && !image.ends_with(":latest"),
            "pinned: {f}"
        );
    }
    let runtime = &lines[lines.iter().position(|l| l == froms[1]).unwrap()..];
    let copies: Vec<&&str> = runtime.iter().filter(|l| l.starts_with("COPY")).collect();
    assert_eq!(
        copies,
        vec![&"COPY --from=build /src/target/release/usage-sync /usr/local/bin/usage-sync"],
        "the runtime stage holds the binary only"
    );
    let user = runtime
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "non-root: {user}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("ADD ")),
        "COPY, never ADD (no remote URLs)"
    );
    assert!(docker.contains("cargo build --release --locked --bin usage-sync"));
    assert!(docker.contains("HEALTHCHECK") && docker.contains("\"healthcheck\""));
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l == "target"),
        "the build context skips target/"
    );
    // The health check's command exists and works.
    let bin = env!("CARGO_BIN_EXE_usage-sync");
    let dir = tempfile::tempdir().unwrap();
    let server = crate::helpers::Binary::start(dir.path(), &[]).await;
    let check = |url: String| {
        std::process::Command::new(bin)
            .args(["healthcheck", "--url", &url])
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(check(server.address.clone()), Some(0));
    let address = server.address.clone();
    drop(server);
    assert_eq!(check(address), Some(1));

    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    for needle in [
        "  postgres:",
        "  redis:",
        "  usage-sync-a:",
        "  usage-sync-b:",
        "\"8081:8080\"",
        "\"8082:8080\"",
        "a-data:/var/lib/usage-sync",
        "b-data:/var/lib/usage-sync",
        "USAGE_SYNC_API_TOKEN: ${USAGE_SYNC_API_TOKEN:?",
        "USAGE_SYNC_ADMIN_TOKEN: ${USAGE_SYNC_ADMIN_TOKEN:?",
        "REDIS_URL: redis://redis:6379",
        "stop_grace_period: 45s",
        "condition: service_healthy",
    ] {
        assert!(
            compose.contains(needle),
            "docker-compose.yml lacks {needle}"
        );
    }
    // Every variable it sets is a real setting.
    let doc = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    for line in compose.lines() {
        let t = line.trim();
        if let Some((k, _)) = t.split_once(':')
            && (k.starts_with("USAGE_SYNC_") || k == "DATABASE_URL" || k == "REDIS_URL")
        {
            assert!(
                doc.contains(&format!("`{k}`")),
                "{k} is not a documented setting"
            );
        }
    }
}
