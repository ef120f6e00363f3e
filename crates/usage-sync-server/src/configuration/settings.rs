//! What the settings turn into: the engine's, the store's and the
//! server's configuration, and what `check-config` prints.

use super::*;

impl Settings {
    /// Tokens are set both or neither: with one set, the routes of the
    /// other stay open to anyone, which a half-configured deployment
    /// would not notice (a warning at start is easy to miss). Blank
    /// tokens are typos in any profile; production also refuses short
    /// ones and one token used for both route sets.
    pub(super) fn validate_tokens(&self) -> Result<(), ConfigError> {
        let rule = |m: String| Err(ConfigError::Rule(m));
        for (t, var) in [
            (&self.http.api_token, "USAGE_SYNC_API_TOKEN"),
            (&self.http.admin_token, "USAGE_SYNC_ADMIN_TOKEN"),
        ] {
            if t.as_ref().is_some_and(|t| t.expose().trim().is_empty()) {
                return rule(format!("{var} is blank; {MAKE_TOKEN}"));
            }
        }
        match (&self.http.api_token, &self.http.admin_token) {
            (Some(_), None) => {
                return rule(format!(
                    "USAGE_SYNC_API_TOKEN is set but USAGE_SYNC_ADMIN_TOKEN is not: the admin routes \
                     would stay open. Set USAGE_SYNC_ADMIN_TOKEN too ({MAKE_TOKEN}), or neither \
                     (development only)"
                ));
            }
            (None, Some(_)) => {
                return rule(format!(
                    "USAGE_SYNC_ADMIN_TOKEN is set but USAGE_SYNC_API_TOKEN is not: the /v1 routes \
                     would stay open. Set USAGE_SYNC_API_TOKEN too ({MAKE_TOKEN}), or neither \
                     (development only)"
                ));
            }
            (None, None) if self.profile == Profile::Production => {
                return rule(format!(
                    "the production profile requires USAGE_SYNC_API_TOKEN and USAGE_SYNC_ADMIN_TOKEN \
                     (or their _FILE variants); {MAKE_TOKEN} for each"
                ));
            }
            (Some(api), Some(admin)) if self.profile == Profile::Production => {
                for (t, var) in [
                    (api, "USAGE_SYNC_API_TOKEN"),
                    (admin, "USAGE_SYNC_ADMIN_TOKEN"),
                ] {
                    if t.expose().len() < MIN_TOKEN_BYTES {
                        return rule(format!(
                            "{var} is shorter than {MIN_TOKEN_BYTES} bytes, refused in production; {MAKE_TOKEN}"
                        ));
                    }
                }
                if api.expose() == admin.expose() {
                    return rule(format!(
                        "USAGE_SYNC_API_TOKEN and USAGE_SYNC_ADMIN_TOKEN are the same: an API client \
                         could call the admin routes. Use two different tokens ({MAKE_TOKEN})"
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Rules that involve several settings.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_tokens()?;
        if self.profile == Profile::Production && self.store.durability == Durability::None {
            return Err(ConfigError::Rule(
                "USAGE_SYNC_DURABILITY=none can lose acknowledged usage and is refused in the production profile (use fsync or batched)"
                    .into(),
            ));
        }
        if self.profile == Profile::Production
            && (self.sync.crash_after_commit.is_some() || self.sync.crash_in_recovery)
        {
            return Err(ConfigError::Rule(
                "USAGE_SYNC_FAULT_* settings are test-only fault injection and are refused in the production profile".into(),
            ));
        }
        if self.profile == Profile::Production && self.enable_simulation {
            return Err(ConfigError::Rule(
                "USAGE_SYNC_ENABLE_SIMULATION consumes units for made-up requests and is refused in the production profile".into(),
            ));
        }
        if !self.plans.contains_key(&self.default_plan) {
            return Err(ConfigError::Rule(format!(
                "default_plan '{}' is not among the configured plans ({})",
                self.default_plan,
                self.plans.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        self.catalogue().map_err(ConfigError::Rule)?;
        Ok(())
    }

    /// The kinds and plans as core types.
    pub fn catalogue(&self) -> Result<(Kinds, Plans), String> {
        let kinds = Kinds::new(&self.kinds)?;
        let mut plans = Vec::new();
        for (name, p) in &self.plans {
            let plan = Plan::from_named_limits(
                name,
                p.period,
                &kinds,
                p.limits.iter().map(|(k, l)| (k.as_str(), *l)),
            )
            .map_err(|e| format!("plan '{name}': {e}"))?;
            plans.push(plan);
        }
        let plans = Plans::new(&self.default_plan, plans).map_err(|e| e.to_string())?;
        Ok((kinds, plans))
    }

    /// The sync engine's configuration: [`Settings::sync`] with its log.
    pub fn sync_config(&self) -> SyncConfig {
        SyncConfig {
            wal: Some(WalConfig {
                fsync_interval: self.store.fsync_interval,
                accept_loss: self.store.accept_log_loss,
                ..WalConfig::new(self.store.data_dir.join("wal"), self.store.durability)
            }),
            ..self.sync.clone()
        }
    }

    /// `(key, shown value)` for every setting, secrets redacted.
    pub fn redacted(&self) -> Vec<(&'static str, String)> {
        let secret = |s: &Option<Secret>| {
            if s.is_some() {
                "<redacted>".to_owned()
            } else {
                "<not set>".to_owned()
            }
        };
        let plans = self
            .plans
            .iter()
            .map(|(n, p)| {
                let limits = p
                    .limits
                    .iter()
                    .map(|(k, l)| {
                        format!(
                            "{k}={}",
                            l.map_or("unlimited".to_owned(), |v| v.to_string())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                format!("{n}({}: {limits})", p.period.as_str())
            })
            .collect::<Vec<_>>()
            .join(", ");
        // Shown when sharing is off: the library's defaults.
        let off = SharingConfig::unset();
        let sharing = self.sync.sharing.as_ref().unwrap_or(&off);
        vec![
            ("profile", self.profile.as_str().to_owned()),
            (
                "preset",
                self.preset
                    .map_or("<none>".to_owned(), |p| p.as_str().to_owned()),
            ),
            (
                "heartbeat_interval",
                format_duration(self.sync.heartbeat_interval),
            ),
            (
                "sync_check_interval",
                format_duration(self.sync.check_interval),
            ),
            (
                "force_sync_threshold",
                self.sync.force_sync_threshold.to_string(),
            ),
            (
                "max_sync_interval",
                format_duration(self.sync.max_sync_interval),
            ),
            ("verbose_logging", self.log.verbose.to_string()),
            (
                "max_active_users_check",
                self.sync.max_active_users_check.to_string(),
            ),
            (
                "session_timeout",
                format_duration(self.sync.session_timeout),
            ),
            ("sync_timeout", format_duration(self.sync.sync_timeout)),
            (
                "max_concurrent_syncs",
                self.sync.max_concurrent_syncs.to_string(),
            ),
            ("batch_size", self.sync.batch_size.to_string()),
            ("max_cached_users", self.sync.max_cached_users.to_string()),
            ("enable_usage_sync", self.sync.enabled.to_string()),
            (
                "performance_mode",
                match self.performance_mode {
                    PerformanceMode::Standard => "standard".into(),
                    PerformanceMode::Optimized => "optimized".into(),
                },
            ),
            ("data_dir", self.store.data_dir.display().to_string()),
            ("database_url", redact_url(&self.store.database_url)),
            ("db_pool_size", self.store.db_pool_size.to_string()),
            (
                "sharing",
                self.sync
                    .sharing
                    .as_ref()
                    .map_or("none", |s| s.mode.as_str())
                    .to_owned(),
            ),
            (
                "redis_url",
                self.redis_url.as_ref().map_or("<not set>".to_owned(), |u| {
                    u.expose()
                        .split(',')
                        .map(redact_url)
                        .collect::<Vec<_>>()
                        .join(",")
                }),
            ),
            ("redis_cluster", sharing.cluster.to_string()),
            ("redis_fallback", sharing.fallback.as_str().to_owned()),
            ("redis_timeout", format_duration(sharing.timeout)),
            ("redis_prefix", sharing.key_prefix.clone()),
            ("lease_size", sharing.lease_size.to_string()),
            ("lease_ttl", format_duration(sharing.lease_ttl)),
            ("listen", self.http.listen.to_string()),
            ("api_token", secret(&self.http.api_token)),
            ("admin_token", secret(&self.http.admin_token)),
            ("metrics_token", secret(&self.http.metrics_token)),
            (
                "alert_sync_latency",
                format_duration(self.alerts.sync_latency),
            ),
            (
                "alert_error_rate_percent",
                self.alerts.error_rate_percent.to_string(),
            ),
            ("alert_cpu_percent", self.alerts.cpu_percent.to_string()),
            ("alert_window", format_duration(self.alerts.window)),
            ("alert_interval", format_duration(self.alerts.interval)),
            ("alert_webhook", secret(&self.alerts.webhook)),
            (
                "max_concurrent_syncs_ceiling",
                self.max_concurrent_syncs_ceiling.to_string(),
            ),
            (
                "shutdown_timeout",
                format_duration(self.http.shutdown_timeout),
            ),
            ("header_timeout", format_duration(self.http.header_timeout)),
            ("body_timeout", format_duration(self.http.body_timeout)),
            ("max_connections", self.http.max_connections.to_string()),
            ("dedup_window", format_duration(self.sync.dedup_window)),
            ("max_request_ids", self.sync.max_request_ids.to_string()),
            ("durability", self.store.durability.as_str().to_owned()),
            ("fsync_interval", format_duration(self.store.fsync_interval)),
            (
                "fault_crash_after_commit",
                self.sync
                    .crash_after_commit
                    .map_or("<not set>".to_owned(), |n| n.to_string()),
            ),
            (
                "fault_crash_in_recovery",
                self.sync.crash_in_recovery.to_string(),
            ),
            ("enable_simulation", self.enable_simulation.to_string()),
            (
                "log_format",
                match self.log.format {
                    LogFormat::Json => "json".into(),
                    LogFormat::Pretty => "pretty".into(),
                },
            ),
            ("log_level", self.log.level.clone()),
            ("kinds", self.kinds.join(",")),
            ("default_plan", self.default_plan.clone()),
            ("plans", plans),
        ]
    }
}
