//! Parsing and printing of single values: durations, the listen
//! address, log filters, and redacted URLs.

use super::*;

/// Shows a duration the way a person writes it (`10m`, `1h 30m`, `500ms`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `host:port`, the host an IP address or a name (`localhost:18081`),
/// resolved once here to the first address it names.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let t = text.trim();
    if let Ok(a) = t.parse() {
        return Ok(a);
    }
    let shape = || format!("'{t}' is not host:port (for example 127.0.0.1:8080 or localhost:8080)");
    match t.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
        _ => return Err(shape()),
    }
    t.to_socket_addrs()
        .map_err(|e| format!("'{t}' cannot be resolved: {e}"))?
        .next()
        .ok_or_else(shape)
}

pub(super) const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a log filter: comma-separated directives, each a level
/// (`warn`) or `target=level` (`flush=debug`). A bare word that is no
/// level (`warnn`) would be taken by the filter as a target name and
/// silence everything else, the warnings included: refused, with the
/// closest level.
pub(super) fn log_filter(raw: &str) -> Result<String, String> {
    let v = raw.trim();
    for d in v.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = match d.split_once('=') {
            Some((target, level)) if !target.is_empty() => level,
            Some(_) => return Err(format!("'{d}' names no target before '='")),
            None if d.contains('[') => continue,
            None => d,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            let closest = LEVELS
                .iter()
                .min_by_key(|l| edit_distance(l, &level.to_ascii_lowercase()))
                .expect("levels exist");
            return Err(format!(
                "'{level}' is not a level (did you mean '{closest}'?): use trace, debug, info, warn, error or off, \
                 optionally with target=level directives such as info,flush=debug"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(v).map_err(|e| e.to_string())?;
    Ok(v.to_owned())
}

/// Three quarters of the soft open-files limit (`RLIMIT_NOFILE`, read from
/// `/proc/self/limits`), leaving the rest for the database pool, the log
/// and Redis; 768 when the limit cannot be read (a 1024 default).
pub(super) fn default_max_connections() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|n| n.parse::<usize>().ok())
        })
        .unwrap_or(1024);
    (soft / 4 * 3).max(16)
}

/// Hides the password of `scheme://user:password@host/...`.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((creds, host)) = rest.split_once('@')
        && let Some((user, _)) = creds.split_once(':')
    {
        return format!("{scheme}://{user}:<redacted>@{host}");
    }
    url.to_owned()
}
