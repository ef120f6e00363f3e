//! Reading settings written by people. The engine's configuration
//! derives `Deserialize` with these readers, so an application (or the
//! usage-sync server) can load it from any serde format and from
//! environment variables, where every value arrives as text.
//!
//! Each reader takes the value both typed (a TOML integer, a boolean) and
//! as text (`"1500"`, `"yes"`), and says what it expected in words an
//! operator can act on: "'soon' is not a duration (use ...)".

use std::time::Duration;

pub use readers::*;

/// Parses a bare number as milliseconds (`1500`), anything else with
/// humantime (`500ms`, `30s`, `5m`, `2h`, `1d`, `1h 30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) {
        let ms: u64 = s.parse().map_err(|_| format!("'{s}' is out of range"))?;
        Duration::from_millis(ms)
    } else {
        humantime::parse_duration(s).map_err(|e| {
            format!("'{s}' is not a duration: {e} (use milliseconds or 500ms, 30s, 5m, 2h, 1d)")
        })?
    };
    if d < Duration::from_millis(1) {
        return Err("must be at least 1 ms".into());
    }
    Ok(d)
}

/// The value `words` gives to `text` (trimmed), or what to write instead:
/// "'x' is not a mode (use standard or optimized)". A word that names the
/// same value as an earlier one is an alias, accepted and not offered.
pub fn choose<T: Copy + PartialEq>(
    text: &str,
    what: &str,
    words: &[(&str, T)],
) -> Result<T, String> {
    let t = text.trim();
    if let Some(&(_, v)) = words.iter().find(|(w, _)| *w == t) {
        return Ok(v);
    }
    let offered: Vec<&str> = (0..words.len())
        .filter(|&i| !words[..i].iter().any(|(_, v)| *v == words[i].1))
        .map(|i| words[i].0)
        .collect();
    let list = match offered.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => offered.join(""),
    };
    Err(format!("'{t}' is not {what} (use {list})"))
}

/// A setting that takes one of a few words.
pub trait Words: Copy + PartialEq + 'static {
    /// What a wrong word is not: "'x' is not {WHAT} (use ...)".
    const WHAT: &'static str;
    /// Each word and its value; a later word for the same value is an
    /// alias, accepted and not offered.
    const WORDS: &'static [(&'static str, Self)];

    fn from_word(text: &str) -> Result<Self, String> {
        choose(text, Self::WHAT, Self::WORDS)
    }
}

/// `true`, `1`, `yes`, `on` and their opposites, any case.
pub fn parse_flag(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("'{s}' is not a boolean (use true or false)")),
    }
}

mod readers {
    use std::fmt;
    use std::marker::PhantomData;
    use std::time::Duration;

    use serde::Deserializer;
    use serde::de::{self, Visitor};

    use super::{Words, parse_duration, parse_flag};

    /// A scalar as it arrived: a number, a boolean or text.
    enum Scalar {
        Int(i128),
        Bool(bool),
        Text(String),
    }

    struct ScalarVisitor;

    impl Visitor<'_> for ScalarVisitor {
        type Value = Scalar;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number, a boolean or text")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
            Ok(Scalar::Bool(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
            Ok(Scalar::Int(v.into()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
            Ok(Scalar::Int(v.into()))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
            Ok(Scalar::Text(v.to_owned()))
        }
    }

    /// Reads one scalar and turns it into `T` with `f`; `f`'s message becomes
    /// the error as it is.
    fn scalar<'de, D: Deserializer<'de>, T>(
        d: D,
        f: impl FnOnce(Scalar) -> Result<T, String>,
    ) -> Result<T, D::Error> {
        f(d.deserialize_any(ScalarVisitor)?).map_err(de::Error::custom)
    }

    /// A duration: a number of milliseconds, or text for [`parse_duration`].
    pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        scalar(d, |s| match s {
            Scalar::Int(ms) => u64::try_from(ms)
                .map_err(|_| format!("{ms} is not a duration (use milliseconds or 500ms, 30s, 5m)"))
                .and_then(|ms| parse_duration(&ms.to_string())),
            Scalar::Text(t) => parse_duration(&t),
            Scalar::Bool(b) => Err(format!("{b} is not a duration")),
        })
    }

    /// A boolean, or text for [`parse_flag`].
    pub fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        scalar(d, |s| match s {
            Scalar::Bool(b) => Ok(b),
            Scalar::Text(t) => parse_flag(&t),
            Scalar::Int(i) => parse_flag(&i.to_string()),
        })
    }

    /// A whole number in `MIN..=MAX`, as a number or as text.
    pub fn count<'de, const MIN: u64, const MAX: u64, T, D>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        scalar(d, |s| {
            let n = match s {
                Scalar::Int(i) => i,
                Scalar::Text(t) => t
                    .trim()
                    .parse::<i128>()
                    .map_err(|_| format!("'{t}' is not a whole number"))?,
                Scalar::Bool(b) => return Err(format!("{b} is not a whole number")),
            };
            match u64::try_from(n) {
                Ok(n) if (MIN..=MAX).contains(&n) => {
                    T::try_from(n).map_err(|_| format!("{n} is too large here"))
                }
                _ => Err(format!("{n} is outside {MIN}..={MAX}")),
            }
        })
    }

    /// [`count`], for a setting that may be left out.
    pub fn some_count<'de, const MIN: u64, const MAX: u64, T, D>(
        d: D,
    ) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        count::<MIN, MAX, T, D>(d).map(Some)
    }

    /// A word setting (see [`Words`]).
    pub fn word<'de, T: Words, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        struct Word<T>(PhantomData<T>);
        impl<T: Words> Visitor<'_> for Word<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", T::WHAT)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
                T::from_word(v).map_err(E::custom)
            }
        }
        d.deserialize_str(Word(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1500").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("0").unwrap_err(), "must be at least 1 ms");
        assert!(parse_duration("5 parsecs").is_err());
    }

    /// The engine's settings read from text, as an application's own
    /// environment or file would give them; keys left out keep their
    /// defaults, and a bad value says what it is not.
    #[test]
    fn sync_config_reads_from_text_keys() {
        use serde::Deserialize;
        use serde::de::value::{Error, MapDeserializer};
        let read = |pairs: Vec<(&'static str, &'static str)>| {
            crate::SyncConfig::deserialize(MapDeserializer::<_, Error>::new(pairs.into_iter()))
        };
        let c = read(vec![
            ("heartbeat_interval", "45s"),
            ("sync_check_interval", "300000"),
            ("enable_usage_sync", "no"),
            ("batch_size", "250"),
        ])
        .unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_secs(45));
        assert_eq!(c.check_interval, Duration::from_secs(300));
        assert!(!c.enabled);
        assert_eq!(c.batch_size, 250);
        assert_eq!(
            c.session_timeout,
            crate::SyncConfig::default().session_timeout
        );
        let e = read(vec![("batch_size", "0")]).unwrap_err().to_string();
        assert_eq!(e, "0 is outside 1..=10000");
        let e = read(vec![("dedup_window", "soon")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("'soon' is not a duration"), "{e}");
    }

    #[test]
    fn a_word_setting_names_the_words_it_takes_and_accepts_its_aliases() {
        let words = [("json", 0), ("pretty", 1), ("text", 1)];
        assert_eq!(choose(" text ", "a log format", &words), Ok(1));
        assert_eq!(
            choose("xml", "a log format", &words),
            Err("'xml' is not a log format (use json or pretty)".to_owned())
        );
        assert_eq!(
            choose(
                "both",
                "a sharing mode",
                &[("none", 0), ("redis", 1), ("lease", 2)]
            ),
            Err("'both' is not a sharing mode (use none, redis or lease)".to_owned())
        );
    }
}
