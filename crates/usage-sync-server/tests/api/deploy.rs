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
        assert!(
            std::env::var_os("CI").is_none(),
            "kubernetes-validate is required in CI (.ci/run installs it)"
        );
        eprintln!("SKIPPED: kubernetes-validate not installed; run .ci/run");
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
        eprintln!("SKIPPED systemd-analyze verify: not installed");
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
