use super::*;

/// The parts of a key, read back as a decoder that knows only the
/// layout would: (user, what, kind, period, request id).
#[derive(Debug, PartialEq, Eq)]
enum Parts {
    Counter(String, String, i64),
    Version(String),
    Record(String, String),
    Owner(String),
    Plans,
}

fn decode_key(prefix: &str, key: &str) -> Option<Parts> {
    let rest = key.strip_prefix(prefix)?.strip_prefix(':')?;
    if let Some(rid) = rest.strip_prefix("rq:") {
        return Some(Parts::Owner(rid.to_owned()));
    }
    if rest == "plans:v" {
        return Some(Parts::Plans);
    }
    let rest = rest.strip_prefix('{')?;
    let colon = rest.find(':')?;
    let n: usize = rest[..colon].parse().ok()?;
    let rest = &rest[colon + 1..];
    let user = rest.get(..n)?.to_owned();
    let rest = rest.get(n..)?.strip_prefix("}:")?;
    if rest == "v" {
        return Some(Parts::Version(user));
    }
    if let Some(rid) = rest.strip_prefix("r:") {
        return Some(Parts::Record(user, rid.to_owned()));
    }
    let rest = rest.strip_prefix("c:")?;
    let (kind, ms) = rest.split_once(':')?;
    Some(Parts::Counter(user, kind.to_owned(), ms.parse().ok()?))
}

proptest::proptest! {
    /// Every key reads back to exactly the parts it was made from, so
    /// two different (user, kind, period, request id) can never share
    /// a key, whatever bytes the ids hold.
    #[test]
    fn every_key_decodes_back_to_its_parts(
        user in "[{}:a-c\\PC]{1,12}",
        rid in "[{}:a-c\\PC]{1,12}",
        kind in "[a-z0-9_-]{1,6}",
        ms in proptest::num::i64::ANY,
    ) {
        let r = Redis::new(vec![], false, Duration::from_secs(1), "p".into());
        let d = |k: String| decode_key("p", &k);
        proptest::prop_assert_eq!(
            d(r.counter_key(&user, &kind, ms)),
            Some(Parts::Counter(user.clone(), kind.clone(), ms))
        );
        proptest::prop_assert_eq!(d(r.version_key(&user)), Some(Parts::Version(user.clone())));
        proptest::prop_assert_eq!(
            d(r.record_key(&user, &rid)),
            Some(Parts::Record(user.clone(), rid.clone()))
        );
        proptest::prop_assert_eq!(d(r.owner_key(&rid)), Some(Parts::Owner(rid.clone())));
    }
}

#[test]
fn keys_of_one_user_share_a_hash_tag_and_never_collide() {
    let r = Redis::new(vec![], false, Duration::from_secs(1), "p".into());
    assert_eq!(r.counter_key("alice", "fast", 5), "p:{5:alice}:c:fast:5");
    assert_eq!(r.version_key("alice"), "p:{5:alice}:v");
    assert_eq!(r.record_key("alice", "r1"), "p:{5:alice}:r:r1");
    assert_eq!(r.plans_key(), "p:plans:v");
    // The request id that forged user `a}1:r:zz`'s counter key in the
    // old layout now stays in user `a`'s record keys.
    let forged = "zz}8:c:fast:5";
    assert_ne!(
        r.record_key("a", forged),
        r.counter_key("a}1:r:zz", "fast", 5)
    );
    // A user id with braces or colons cannot forge another user's key.
    assert_ne!(
        r.counter_key("a}1:c:fast:5", "fast", 5),
        r.counter_key("a", "fast", 5)
    );
    // Redis Cluster hashes the text between the first '{' and the next
    // '}': the same for every key of one user, whatever its id holds.
    let tag = |k: &str| {
        let open = k.find('{').unwrap();
        let close = open + 1 + k[open + 1..].find('}').unwrap();
        k[open + 1..close].to_owned()
    };
    for user in ["u", "u}x", "{a}", "a:b", "}", "}}"] {
        let t = tag(&r.counter_key(user, "k", 1));
        assert!(!t.is_empty(), "an empty tag would scatter {user:?}'s keys");
        assert_eq!(t, tag(&r.version_key(user)));
        assert_eq!(t, tag(&r.record_key(user, "rid")));
    }
}

#[test]
fn admit_replies_parse() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        parse_admit(&s(&["1", "7"])).unwrap(),
        AdmitReply::Decided {
            allowed: true,
            used: 7
        }
    );
    assert_eq!(
        parse_admit(&s(&["dup", "0", "3", "fast", "2"])).unwrap(),
        AdmitReply::Duplicate {
            allowed: false,
            used: 3,
            kind: "fast".into(),
            amount: 2
        }
    );
    assert_eq!(
        parse_admit(&s(&["stale", "4"])).unwrap(),
        AdmitReply::Stale(4)
    );
    assert!(parse_admit(&s(&["x"])).is_err());
}
