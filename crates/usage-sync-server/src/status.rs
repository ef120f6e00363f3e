//! `usage-sync status`: the status document of a running instance as a
//! readable table, ending with the runtime checklist.

use std::fmt::Write;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::configuration::Settings;

/// Fetches `GET /admin/v1/status` and prints it; see the command's help
/// for the exit codes.
pub fn run(
    settings: Option<&Settings>,
    url: Option<String>,
    token: Option<String>,
    json: bool,
) -> ExitCode {
    let url = url
        .or_else(|| settings.map(|s| format!("http://{}", s.http.listen)))
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let token = token.or_else(|| {
        settings.and_then(|s| s.http.admin_token.as_ref().map(|t| t.expose().to_owned()))
    });
    let rt = match crate::cli::build_runtime(false, ExitCode::from(2)) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let doc = rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut req = client.get(format!("{}/admin/v1/status", url.trim_end_matches('/')));
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        Ok::<_, reqwest::Error>((status, body))
    });
    let (status, doc) = match doc {
        Ok(d) => d,
        Err(e) => {
            eprintln!("✗ cannot reach {url}: {}", crate::bench::error_chain(&e));
            return ExitCode::from(2);
        }
    };
    if !status.is_success() {
        let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
            if token.is_some() {
                " (the admin token given is not this instance's)"
            } else {
                " (pass the admin token with --token, or set USAGE_SYNC_ADMIN_TOKEN)"
            }
        } else {
            ""
        };
        eprintln!(
            "✗ {url} answered {status}: {}{hint}",
            doc["error"]["message"].as_str().unwrap_or("?")
        );
        return ExitCode::from(2);
    }
    let (text, ok) = render(&url, &doc);
    if json {
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print!("{text}");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// Renders the status document; returns the text and whether every
/// runtime check passed.
pub fn render(url: &str, d: &Value) -> (String, bool) {
    let mut o = String::new();
    let s = &d["sync"];
    // Seconds of uptime, read back from the service's own JSON.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let up = f(&d["uptime_seconds"]) as u64;
    let _ = writeln!(
        o,
        "usage-sync at {url}: {}, up {}h {:02}m, profile {}, durability {}",
        if d["running"].as_bool().unwrap_or(false) {
            "running"
        } else {
            "stopping"
        },
        up / 3600,
        (up % 3600) / 60,
        d["profile"].as_str().unwrap_or("?"),
        d["durability"].as_str().unwrap_or("?"),
    );
    let store = &d["store"];
    let pool = match store["pool"].as_object() {
        Some(p) => format!(", pool {} of {} in use", p["in_use"], p["size"]),
        None => String::new(),
    };
    let _ = writeln!(
        o,
        "  {:<14} {}, {}{pool}",
        "store",
        store["backend"].as_str().unwrap_or("?"),
        if store["reachable"].as_bool().unwrap_or(false) {
            "reachable"
        } else {
            "UNREACHABLE"
        },
    );
    let _ = writeln!(
        o,
        "  {:<14} {} ok, {} failed ({:.2} % errors), avg {:.1} ms, max {:.1} ms, {:.0} per hour",
        "flushes",
        s["flushes"],
        s["failures"],
        f(&s["error_rate"]) * 100.0,
        f(&s["avg_flush_ms"]),
        f(&s["max_flush_ms"]),
        f(&s["flushes_per_hour"]),
    );
    let _ = writeln!(
        o,
        "  {:<14} {} units in {} rows ({:.1} units per row)",
        "written",
        s["units_flushed"],
        s["rows_written"],
        f(&s["write_amplification"]),
    );
    let _ = writeln!(
        o,
        "  {:<14} {} units over {} users, oldest {:.1} s; retry backlog {} units",
        "pending",
        d["pending_units"],
        d["users_active"],
        f(&d["oldest_pending_age_seconds"]),
        d["retry_backlog_units"],
    );
    let _ = writeln!(o, "  {:<14} {} in memory", "users", d["users_tracked"]);
    let top: Vec<String> = d["top_pending_users"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| {
            format!(
                "{} ({})",
                u["user_id"].as_str().unwrap_or("?"),
                u["pending"]
            )
        })
        .collect();
    if !top.is_empty() {
        let _ = writeln!(o, "  {:<14} {}", "top pending", top.join(", "));
    }
    if let Some(by) = s["by_trigger"].as_object() {
        let parts: Vec<String> = by
            .iter()
            .filter(|(_, v)| {
                v["flushes"].as_u64().unwrap_or(0) + v["failures"].as_u64().unwrap_or(0) > 0
            })
            .map(|(k, v)| format!("{k} {}", v["flushes"]))
            .collect();
        let _ = writeln!(
            o,
            "  {:<14} {}",
            "by trigger",
            if parts.is_empty() {
                "none yet".into()
            } else {
                parts.join(", ")
            }
        );
    }
    let _ = writeln!(o, "\nruntime checklist");
    let mut all_ok = true;
    for c in d["checklist"].as_array().into_iter().flatten() {
        let ok = c["ok"].as_bool().unwrap_or(false);
        all_ok &= ok;
        let _ = writeln!(
            o,
            "  {} {:<14} {} (target {})",
            if ok { "✓" } else { "✗" },
            c["check"].as_str().unwrap_or("?"),
            c["value"].as_str().unwrap_or("?"),
            c["target"].as_str().unwrap_or("?"),
        );
    }
    (o, all_ok)
}

/// `usage-sync healthcheck`: GET /healthz within 3 s; exit 0 on 200.
pub fn healthcheck(url: &str) -> ExitCode {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return ExitCode::FAILURE;
    };
    let url = format!("{}/healthz", url.trim_end_matches('/'));
    let ok = rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .ok()?;
        client
            .get(&url)
            .send()
            .await
            .ok()
            .map(|r| r.status().is_success())
    });
    if ok == Some(true) {
        ExitCode::SUCCESS
    } else {
        eprintln!("✗ {url} is not healthy");
        ExitCode::FAILURE
    }
}
