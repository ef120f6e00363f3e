//! Domain newtypes that cannot hold invalid data: once a `UserId`,
//! `RequestId` or `Units` exists, it has passed `parse`.

use std::borrow::Borrow;
use std::fmt;

use smol_str::SmolStr;

use crate::error::CoreError;

/// Longest accepted user or request id, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Largest accepted amount for one consume.
pub const MAX_AMOUNT: u64 = 1_000_000_000;

fn check_id(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty");
    }
    if s.len() > MAX_ID_BYTES {
        return Err("too long");
    }
    if s.chars().any(invisible) {
        return Err("control or format character");
    }
    Ok(())
}

/// Characters an id may not hold: controls (Cc), format characters (Cf:
/// bidi overrides such as U+202E, zero-width spaces) and the line and
/// paragraph separators (Zl U+2028, Zp U+2029). They render as nothing,
/// or reorder or break what follows, so an id holding one can forge lines
/// in logs and dashboards, or look like another id. Other Unicode is
/// allowed. ASCII, almost every id, is decided without the table.
fn invisible(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    if c.is_ascii() {
        return c.is_ascii_control();
    }
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

/// An id type: a checked string, compared, ordered and hashed as that
/// string (so tables keyed by it are looked up with a plain `&str`),
/// shown without quotes by `Display` and with them by `Debug`.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $error:path) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(SmolStr);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, CoreError> {
                check_id(s).map_err($error)?;
                Ok($name(SmolStr::new(s)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A user id. The same id is held by the user table, the dirty queue,
    /// the activity queue and in-flight batches, and is copied into every
    /// consume answer, so its representation matters:
    /// - ids up to 23 bytes (numeric ids, `user-123`, Stripe-style
    ///   `cus_...`) are stored inline in the 24-byte value: parsing
    ///   allocates nothing, cloning is a copy, and a table lookup compares
    ///   the key without following a pointer (one cache miss less per
    ///   consume over many users);
    /// - longer ids (UUIDs, most auth-provider ids) are one shared
    ///   allocation; cloning is an atomic increment.
    UserId,
    CoreError::InvalidUserId
);

id_type!(
    /// A client-chosen idempotency key for one consume. Stored like
    /// [`UserId`]: inline up to 23 bytes, else one shared allocation.
    RequestId,
    CoreError::InvalidRequestId
);

/// A positive amount of units for one consume, at most [`MAX_AMOUNT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Units(u64);

impl Units {
    pub const ONE: Units = Units(1);

    /// Accepts 1..=1e9. Takes an `i128` so callers can pass whatever integer
    /// they parsed (negative or huge) and get the same error.
    pub fn parse(n: i128) -> Result<Self, CoreError> {
        if n < 1 || n > i128::from(MAX_AMOUNT) {
            return Err(CoreError::InvalidAmount(n));
        }
        u64::try_from(n)
            .map(Units)
            .map_err(|_| CoreError::InvalidAmount(n))
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// The amount as a signed delta: lossless, as amounts are at most
    /// [`MAX_AMOUNT`].
    pub fn signed(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }
}

/// A kind of usage (`premium`, `fast`, ...). Kinds are fixed at start-up and
/// numbered densely so per-user counters can live in a small array indexed
/// by [`Kind::index`].
///
/// `Copy`: every consume and every flushed delta carries a `Kind`. With a
/// reference-counted name, all cores consuming the same kind would bump one
/// shared counter on each request; the names are instead leaked once when
/// the kinds are configured (a few bytes per kind, for the process's life).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kind {
    index: u16,
    name: &'static str,
}

impl Kind {
    pub fn index(&self) -> usize {
        self.index as usize
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kind({})", self.name)
    }
}

/// The configured kinds, in a fixed order.
#[derive(Clone, Debug)]
pub struct Kinds {
    all: Vec<Kind>,
}

impl Kinds {
    /// Kinds must be non-empty, unique and valid identifiers
    /// (`[a-z0-9_-]{1,64}`), because they appear in URLs, JSON keys and SQL.
    pub fn new<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        if names.is_empty() {
            return Err("at least one kind is required".into());
        }
        if names.len() > u16::MAX as usize {
            return Err("too many kinds".into());
        }
        let mut all = Vec::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            let n = n.as_ref();
            let ok = !n.is_empty()
                && n.len() <= 64
                && n.bytes().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-'
                });
            if !ok {
                return Err(format!(
                    "invalid kind name '{n}' (use 1-64 of a-z, 0-9, '_' and '-')"
                ));
            }
            if all.iter().any(|k: &Kind| k.name() == n) {
                return Err(format!("duplicate kind '{n}'"));
            }
            all.push(Kind {
                // At most u16::MAX kinds, checked above.
                index: u16::try_from(i).map_err(|_| "too many kinds".to_owned())?,
                name: Box::leak(n.to_owned().into_boxed_str()),
            });
        }
        Ok(Kinds { all })
    }

    pub fn get(&self, name: &str) -> Result<&Kind, CoreError> {
        self.all
            .iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| CoreError::UnknownKind(truncate_for_message(name)))
    }

    pub fn by_index(&self, i: usize) -> &Kind {
        &self.all[i]
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Kind> {
        self.all.iter()
    }
}

/// Error messages echo client input; cap it so a 64 KiB kind name does not
/// come back in the response.
pub fn truncate_for_message(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: String = s[..end].chars().filter(|c| !c.is_control()).collect();
    if end < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_empty_long_and_control() {
        assert!(UserId::parse("u1").is_ok());
        assert_eq!(UserId::parse(""), Err(CoreError::InvalidUserId("empty")));
        assert!(UserId::parse(&"x".repeat(128)).is_ok());
        assert_eq!(
            UserId::parse(&"x".repeat(129)),
            Err(CoreError::InvalidUserId("too long"))
        );
        assert_eq!(
            RequestId::parse("a\nb"),
            Err(CoreError::InvalidRequestId("control or format character"))
        );
        // Format characters and separators that fake or reorder log lines.
        for bad in [
            "a\u{2028}b",
            "a\u{2029}b",
            "evil\u{202E}gnp",
            "zero\u{200B}width",
            "\u{FEFF}bom",
            "x\u{85}y",
        ] {
            assert_eq!(
                UserId::parse(bad),
                Err(CoreError::InvalidUserId("control or format character")),
                "{bad:?}"
            );
            assert!(RequestId::parse(bad).is_err(), "{bad:?}");
        }
        // Other Unicode stays allowed.
        for good in ["café", "用户-42", "ユーザー", "emoji-🚀", "a b"] {
            assert!(UserId::parse(good).is_ok(), "{good:?}");
        }
        // 128 bytes, not 128 chars: 43 three-byte chars = 129 bytes.
        assert!(UserId::parse(&"€".repeat(43)).is_err());
    }

    #[test]
    fn short_and_long_ids_behave_as_their_strings() {
        use std::collections::HashMap;
        assert_eq!(std::mem::size_of::<UserId>(), 24);
        // Either side of the inline limit, and multi-byte characters.
        let names = [
            "u".to_owned(),
            "x".repeat(23),
            "x".repeat(24),
            "€".repeat(7),
            "€".repeat(8),
            "x".repeat(128),
        ];
        let mut by_id: HashMap<UserId, usize> = HashMap::new();
        for (i, n) in names.iter().enumerate() {
            let id = UserId::parse(n).unwrap();
            assert_eq!(id.as_str(), n);
            assert_eq!(id.clone(), id);
            by_id.insert(id, i);
        }
        // Looked up by `&str` (the hot path does) for both representations.
        for (i, n) in names.iter().enumerate() {
            assert_eq!(by_id.get(n.as_str()), Some(&i));
        }
        let mut sorted: Vec<UserId> = names.iter().map(|n| UserId::parse(n).unwrap()).collect();
        sorted.sort();
        let mut expected = names.to_vec();
        expected.sort();
        assert_eq!(
            sorted.iter().map(UserId::as_str).collect::<Vec<_>>(),
            expected
        );
        assert_eq!(
            RequestId::parse(&"r".repeat(40)).unwrap().as_str(),
            "r".repeat(40)
        );
    }

    #[test]
    fn units_bounds() {
        assert!(Units::parse(0).is_err());
        assert!(Units::parse(-1).is_err());
        assert_eq!(Units::parse(1_000_000_000).unwrap().get(), 1_000_000_000);
        assert!(Units::parse(1_000_000_001).is_err());
    }

    #[test]
    fn kinds_are_validated_and_indexed() {
        let k = Kinds::new(&["premium", "fast"]).unwrap();
        assert_eq!(k.get("fast").unwrap().index(), 1);
        assert!(matches!(k.get("slow"), Err(CoreError::UnknownKind(_))));
        assert!(Kinds::new(&["a", "a"]).is_err());
        assert!(Kinds::new(&["Bad Name"]).is_err());
        assert!(Kinds::new::<&str>(&[]).is_err());
    }
}
