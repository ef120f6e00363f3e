//! Plans from the config file, and the default catalogue.

use super::*;

pub(super) fn parse_plans(
    v: &toml::Value,
    path: &Path,
) -> Result<BTreeMap<String, PlanSettings>, ConfigError> {
    let err = |message: String| ConfigError::Invalid {
        key: "plans",
        origin: Source::File(path.to_owned()),
        message,
    };
    let table = v
        .as_table()
        .ok_or_else(|| err("[plans] must be a table".into()))?;
    let mut out = BTreeMap::new();
    for (name, plan) in table {
        let plan = plan
            .as_table()
            .ok_or_else(|| err(format!("[plans.{name}] must be a table")))?;
        let mut period = PeriodKind::Monthly;
        let mut limits = BTreeMap::new();
        for (k, v) in plan {
            match k.as_str() {
                "period" => {
                    period = v
                        .as_str()
                        .ok_or_else(|| err(format!("plans.{name}.period must be a string")))?
                        .parse()
                        .map_err(|e: usage_sync_core::CoreError| {
                            err(format!("plans.{name}.period: {e}"))
                        })?;
                }
                "limits" => {
                    let t = v
                        .as_table()
                        .ok_or_else(|| err(format!("plans.{name}.limits must be a table")))?;
                    for (kind, l) in t {
                        let limit = match l {
                            toml::Value::Integer(i) if *i >= 0 => Some(i.unsigned_abs()),
                            toml::Value::String(s) if s == "unlimited" => None,
                            _ => {
                                return Err(err(format!(
                                    "plans.{name}.limits.{kind} must be a non-negative integer or \"unlimited\""
                                )));
                            }
                        };
                        limits.insert(kind.clone(), limit);
                    }
                }
                other => return Err(err(format!("unknown key plans.{name}.{other}"))),
            }
        }
        out.insert(name.clone(), PlanSettings { period, limits });
    }
    Ok(out)
}

pub(super) fn default_plans() -> BTreeMap<String, PlanSettings> {
    let plan = |p: u64, f: u64| PlanSettings {
        period: PeriodKind::Monthly,
        limits: [
            ("premium".to_owned(), Some(p)),
            ("fast".to_owned(), Some(f)),
        ]
        .into(),
    };
    [
        ("free".to_owned(), plan(10, 50)),
        ("premium".to_owned(), plan(100, 1000)),
    ]
    .into()
}
