use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;

use super::*;

/// A JWT (unsigned: the signature is not read) whose payload is `claims`.
fn jwt(claims: &str) -> String {
    let encode = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!("{}.{}.c2ln", encode(r#"{"alg":"ES256"}"#), encode(claims))
}

#[test]
fn the_expiry_is_read_from_a_jwts_exp_claim() {
    let at = |s: u64| Some(UNIX_EPOCH + Duration::from_secs(s));
    assert_eq!(
        Assertion::new(jwt(r#"{"exp":1700000000}"#)).expires_at(),
        at(1_700_000_000)
    );
    assert_eq!(
        Assertion::new(jwt(r#"{"exp":1.7e9,"sub":"x"}"#)).expires_at(),
        at(1_700_000_000)
    );
    // With padding, and around whitespace (a file's newline).
    let claims = base64::engine::general_purpose::URL_SAFE.encode(r#"{"exp":1700000000 }"#);
    assert!(claims.ends_with('='), "{claims}");
    let padded = format!("e30.{claims}.c2ln\n");
    assert_eq!(Assertion::new(padded).expires_at(), at(1_700_000_000));
    for opaque in [
        "not-a-jwt",
        "a.b",
        "a.b.c.d",
        &jwt(r#"{"sub":"no exp"}"#),
        &jwt(r#"{"exp":"soon"}"#),
        &jwt(r#"{"exp":-5}"#),
        &jwt("not json"),
        "..",
    ] {
        assert_eq!(Assertion::new(opaque).expires_at(), None, "{opaque}");
    }
    // A far future saturates instead of overflowing.
    assert!(
        Assertion::new(jwt(r#"{"exp":1e300}"#))
            .expires_at()
            .is_some()
    );
}

#[test]
fn an_expired_or_empty_assertion_is_refused() {
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_100);
    let expired = Assertion::new(jwt(r#"{"exp":1700000000}"#)).fresh_at(now);
    assert!(
        matches!(expired, Err(Error::ExpiredAssertion { ago }) if ago == Duration::from_secs(100)),
        "{expired:?}"
    );
    assert!(expired.unwrap_err().is_transient());
    assert!(
        Assertion::new(jwt(r#"{"exp":1700000200}"#))
            .fresh_at(now)
            .is_ok()
    );
    assert!(
        Assertion::new("opaque-without-expiry")
            .fresh_at(now)
            .is_ok()
    );
    assert!(matches!(
        Assertion::new("  \n").fresh_at(now),
        Err(Error::Assertion(_))
    ));
    let dated = Assertion::new("opaque").with_expires_at(now - Duration::from_secs(1));
    assert!(matches!(
        dated.fresh_at(now),
        Err(Error::ExpiredAssertion { .. })
    ));
}

#[test]
fn an_assertion_shows_no_jwt_in_debug_or_errors() {
    let secret = jwt(r#"{"exp":1700000000,"sub":"system:serviceaccount:prod:orders"}"#);
    let assertion = Assertion::new(secret.clone());
    let shown = format!("{assertion:?}");
    assert!(!shown.contains(&secret[..20]), "{shown}");
    assert!(shown.contains("redacted"));
    let err = assertion.fresh_at(SystemTime::now()).unwrap_err();
    assert!(!format!("{err} {err:?}").contains(&secret[..20]));
}

#[tokio::test]
async fn a_token_file_is_read_again_for_every_assertion() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "first\n").unwrap();
    let file = TokenFile::new(&path);
    assert_eq!(file.assertion().await.unwrap().secret(), "first");
    std::fs::write(&path, "second").unwrap();
    assert_eq!(file.assertion().await.unwrap().secret(), "second");
    std::fs::remove_file(&path).unwrap();
    let missing = file.assertion().await.unwrap_err();
    assert!(matches!(missing, Error::Assertion(_)), "{missing:?}");
    assert!(
        missing.to_string().contains("token"),
        "names the path: {missing}"
    );
    std::fs::write(&path, vec![b'a'; 70 * 1024]).unwrap();
    assert!(matches!(file.assertion().await, Err(Error::Assertion(_))));
}

#[test]
fn a_token_file_from_an_unset_variable_is_a_configuration_error() {
    let unset = TokenFile::from_env("TOWER_BEARER_TEST_VARIABLE_NEVER_SET");
    assert!(matches!(unset, Err(Error::Config(_))), "{unset:?}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1_000))]

    /// Any text, and any claims in a JWT's shape, give an expiry or none: never a panic.
    #[test]
    fn any_text_or_claims_never_panic(
        text in ".{0,256}",
        claims in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
    ) {
        let _ = Assertion::new(text).expires_at();
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&claims);
        let _ = Assertion::new(format!("e30.{encoded}.c2ln")).expires_at();
    }

    /// Any numeric `exp` gives an expiry that is no earlier than the epoch, or none.
    #[test]
    fn any_exp_is_read_or_refused(exp in proptest::num::f64::ANY) {
        if let Some(at) = Assertion::new(jwt(&format!(r#"{{"exp":{exp}}}"#))).expires_at() {
            proptest::prop_assert!(at >= UNIX_EPOCH);
        }
    }
}
