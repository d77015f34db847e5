//! What a fleet stores in Redis for a token, sealed with AES-256-GCM.
//!
//! A value is `tb1` (sealed) or `tb0` (plain text, only when the user opted into it), then for a
//! sealed value the key's id (8 bytes: the start of a SHA-256 of the key, so that a value sealed
//! with another key is told apart from a forged one and keys can rotate), a random 96-bit
//! nonce, and the ciphertext with its tag. The plain text is a small JSON document; the token
//! key is the associated data, so a value copied under another key does not open.
//!
//! A token's value starts with the token's [`fingerprint`], in the clear, so that a script can
//! delete a rejected token only if it is still the one stored, and notices can name it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes_gcm::{
    Aes256Gcm, Key, Nonce,
    aead::{Aead, KeyInit, Payload},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{AccessToken, Token};

const SEALED: &[u8; 3] = b"tb1";
const PLAIN: &[u8; 3] = b"tb0";
const KEY_ID_LEN: usize = 8;
const NONCE_LEN: usize = 12;
/// The length of a token's [`fingerprint`].
pub(crate) const FINGERPRINT_LEN: usize = 16;

/// A token's fingerprint: the first 128 bits of a SHA-256 of it. It names a token without
/// revealing it, the way a DPoP proof's `ath` (RFC 9449) does in the clear: an access token is
/// too random to be found from its hash.
pub(crate) fn fingerprint(token: &AccessToken) -> [u8; FINGERPRINT_LEN] {
    let mut hash = Sha256::new();
    hash.update(b"tower-bearer token fingerprint\0");
    hash.update(token.secret().as_bytes());
    let mut fingerprint = [0u8; FINGERPRINT_LEN];
    for (byte, hashed) in fingerprint.iter_mut().zip(hash.finalize()) {
        *byte = hashed;
    }
    fingerprint
}

/// How values are sealed: with a key (values sealed with earlier keys still open), or
/// (explicitly) not at all.
#[derive(Clone)]
pub(crate) enum Sealing {
    Key {
        current: SealKey,
        previous: Vec<SealKey>,
    },
    Plaintext,
}

/// One AES-256-GCM key and its id.
#[derive(Clone)]
pub(crate) struct SealKey {
    cipher: Box<Aes256Gcm>,
    id: [u8; KEY_ID_LEN],
}

impl SealKey {
    fn new(key: &[u8; 32]) -> SealKey {
        let mut hash = Sha256::new();
        hash.update(b"tower-bearer key id\0");
        hash.update(key);
        let mut id = [0u8; KEY_ID_LEN];
        for (byte, hashed) in id.iter_mut().zip(hash.finalize()) {
            *byte = hashed;
        }
        SealKey {
            cipher: Box::new(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key))),
            id,
        }
    }
}

impl std::fmt::Debug for Sealing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sealing::Key { current, previous } => {
                write!(f, "Key(id {}", hex(&current.id))?;
                for key in previous {
                    write!(f, ", previous {}", hex(&key.id))?;
                }
                f.write_str(")")
            }
            Sealing::Plaintext => f.write_str("Plaintext"),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A token as a fleet stores it. Its expiry is wall-clock time: processes share no monotonic
/// clock.
#[derive(Serialize, Deserialize)]
struct Stored {
    access_token: String,
    token_type: String,
    /// Milliseconds since the Unix epoch.
    expires_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

impl Drop for Stored {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.access_token.zeroize();
    }
}

impl Sealing {
    pub(crate) fn with_key(key: &[u8; 32]) -> Sealing {
        Sealing::Key {
            current: SealKey::new(key),
            previous: Vec::new(),
        }
    }

    /// The same, also opening values sealed with `key` (a key being rotated out); `None` for
    /// a plain-text sealing.
    pub(crate) fn with_previous(self, key: &[u8; 32]) -> Option<Sealing> {
        match self {
            Sealing::Key {
                current,
                mut previous,
            } => {
                previous.push(SealKey::new(key));
                Some(Sealing::Key { current, previous })
            }
            Sealing::Plaintext => None,
        }
    }

    /// The value to store for `token`, which expires at `expires_at`; `key` is the Redis key it
    /// goes under. It starts with the token's fingerprint.
    pub(crate) fn seal(&self, token: &Token, expires_at: SystemTime, key: &str) -> Option<Vec<u8>> {
        let stored = Stored {
            access_token: token.access_token().secret().to_owned(),
            token_type: token.token_type().to_owned(),
            expires_at_ms: u64::try_from(expires_at.duration_since(UNIX_EPOCH).ok()?.as_millis())
                .ok()?,
            scope: token.scope().map(str::to_owned),
        };
        let json = Zeroizing::new(serde_json::to_vec(&stored).ok()?);
        let mut value = fingerprint(token.access_token()).to_vec();
        value.extend(self.seal_bytes(&json, key)?);
        Some(value)
    }

    /// `plain` sealed for the Redis key `key` (or marked plain, for a plain-text sealing).
    pub(crate) fn seal_bytes(&self, plain: &[u8], key: &str) -> Option<Vec<u8>> {
        match self {
            Sealing::Plaintext => {
                let mut value = PLAIN.to_vec();
                value.extend_from_slice(plain);
                Some(value)
            }
            Sealing::Key {
                current: SealKey { cipher, id },
                ..
            } => {
                let mut nonce = [0u8; NONCE_LEN];
                getrandom::fill(&mut nonce).ok()?;
                let sealed = cipher
                    .encrypt(
                        Nonce::from_slice(&nonce),
                        Payload {
                            msg: plain,
                            aad: key.as_bytes(),
                        },
                    )
                    .ok()?;
                let mut value = Vec::with_capacity(3 + KEY_ID_LEN + NONCE_LEN + sealed.len());
                value.extend_from_slice(SEALED);
                value.extend_from_slice(id);
                value.extend_from_slice(&nonce);
                value.extend_from_slice(&sealed);
                Some(value)
            }
        }
    }

    /// What `value`, stored under `key`, holds, if this sealing opens it: a value sealed with
    /// another key, tampered with, or of the other kind does not.
    pub(crate) fn open_bytes(&self, value: &[u8], key: &str) -> Option<Zeroizing<Vec<u8>>> {
        let (kind, rest) = value.split_at_checked(3)?;
        match self {
            Sealing::Plaintext if kind == PLAIN => Some(Zeroizing::new(rest.to_vec())),
            Sealing::Key { current, previous } if kind == SEALED => {
                let (value_id, rest) = rest.split_at_checked(KEY_ID_LEN)?;
                let opener = std::iter::once(current)
                    .chain(previous)
                    .find(|candidate| candidate.id == value_id)?;
                let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
                let plain = opener
                    .cipher
                    .decrypt(
                        Nonce::from_slice(nonce),
                        Payload {
                            msg: sealed,
                            aad: key.as_bytes(),
                        },
                    )
                    .ok()?;
                Some(Zeroizing::new(plain))
            }
            _ => None,
        }
    }

    /// The token in `value`, stored under `key`, with its time left, if this sealing opens it
    /// and it has not expired.
    pub(crate) fn open(&self, value: &[u8], key: &str) -> Option<(Token, Duration)> {
        let (named, value) = value.split_at_checked(FINGERPRINT_LEN)?;
        let json = self.open_bytes(value, key)?;
        let stored: Stored = serde_json::from_slice(&json).ok()?;
        let expires_at = UNIX_EPOCH.checked_add(Duration::from_millis(stored.expires_at_ms))?;
        let left = expires_at.duration_since(SystemTime::now()).ok()?;
        let mut token = Token::new(stored.access_token.as_str())
            .with_token_type(stored.token_type.clone())
            .with_expires_in(left);
        if let Some(scope) = &stored.scope {
            token = token.with_scope(scope.clone());
        }
        // The fingerprint is in the clear: one that does not name the token is a forgery.
        (fingerprint(token.access_token()) == named).then_some((token, left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "app:{00}:token";

    fn token() -> Token {
        Token::new("at-VERY-SECRET")
            .with_token_type("Bearer")
            .with_scope("read")
    }

    fn in_an_hour() -> SystemTime {
        SystemTime::now() + Duration::from_secs(3600)
    }

    #[test]
    fn a_sealed_token_opens_with_its_key_only_and_shows_nothing_in_the_clear() {
        let sealing = Sealing::with_key(&[7; 32]);
        let value = sealing.seal(&token(), in_an_hour(), KEY).unwrap();
        assert!(!value.windows(6).any(|w| w == b"SECRET"));
        let (opened, left) = sealing.open(&value, KEY).unwrap();
        assert_eq!(opened.access_token().secret(), "at-VERY-SECRET");
        assert_eq!(opened.scope(), Some("read"));
        assert!(left > Duration::from_secs(3590) && left <= Duration::from_secs(3600));

        assert!(
            Sealing::with_key(&[8; 32]).open(&value, KEY).is_none(),
            "another key"
        );
        assert!(
            sealing.open(&value, "app:{01}:token").is_none(),
            "moved to another key"
        );
        assert!(
            Sealing::Plaintext.open(&value, KEY).is_none(),
            "not plain text"
        );
        let mut tampered = value.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(sealing.open(&tampered, KEY).is_none(), "tampered");
        for cut in 0..value.len() {
            assert!(sealing.open(&value[..cut], KEY).is_none(), "cut at {cut}");
        }
        assert!(
            sealing.seal(&token(), in_an_hour(), KEY).unwrap() != value,
            "a fresh nonce each time"
        );
    }

    #[test]
    fn a_value_starts_with_the_fingerprint_of_its_token_and_a_wrong_one_does_not_open() {
        let sealing = Sealing::with_key(&[7; 32]);
        let value = sealing.seal(&token(), in_an_hour(), KEY).unwrap();
        let named = fingerprint(token().access_token());
        assert_eq!(value[..FINGERPRINT_LEN], named);
        assert_ne!(
            named,
            fingerprint(Token::new("at-OTHER").access_token()),
            "each token its own"
        );
        let mut renamed = value.clone();
        renamed[0] ^= 1;
        assert!(sealing.open(&renamed, KEY).is_none());
        for sealing in [sealing, Sealing::Plaintext] {
            let value = sealing.seal(&token(), in_an_hour(), KEY).unwrap();
            assert_eq!(value[..FINGERPRINT_LEN], named);
        }
    }

    #[test]
    fn a_sealing_with_a_key_never_accepts_a_plain_value() {
        let plain = Sealing::Plaintext
            .seal(&token(), in_an_hour(), KEY)
            .unwrap();
        assert!(Sealing::Plaintext.open(&plain, KEY).is_some());
        assert!(Sealing::with_key(&[7; 32]).open(&plain, KEY).is_none());
    }

    #[test]
    fn a_value_sealed_with_a_previous_key_opens_and_new_values_use_the_current_one() {
        let old = Sealing::with_key(&[1; 32]);
        let value = old.seal(&token(), in_an_hour(), KEY).unwrap();
        let rotated = Sealing::with_key(&[2; 32]).with_previous(&[1; 32]).unwrap();
        assert!(
            rotated.open(&value, KEY).is_some(),
            "the previous key opens it"
        );
        assert!(Sealing::with_key(&[2; 32]).open(&value, KEY).is_none());
        let new = rotated.seal(&token(), in_an_hour(), KEY).unwrap();
        assert!(old.open(&new, KEY).is_none(), "sealed with the current key");
        assert!(Sealing::with_key(&[2; 32]).open(&new, KEY).is_some());
        assert!(Sealing::Plaintext.with_previous(&[1; 32]).is_none());
    }

    #[test]
    fn an_expired_token_does_not_open() {
        let sealing = Sealing::with_key(&[7; 32]);
        let past = SystemTime::now() - Duration::from_secs(1);
        let value = sealing.seal(&token(), past, KEY).unwrap();
        assert!(sealing.open(&value, KEY).is_none());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1_000))]

        /// Whatever Redis holds (anyone who can write it may write anything) opens to nothing
        /// or to a token, never a panic: arbitrary bytes, and plain-text values of any shape,
        /// expiry included (a millisecond count past what a clock can add).
        #[test]
        fn arbitrary_values_never_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            expires_at_ms in proptest::num::u64::ANY,
            access_token in "\\PC{0,40}",
        ) {
            for sealing in [Sealing::with_key(&[7; 32]), Sealing::Plaintext] {
                let _ = sealing.open(&bytes, KEY);
                let _ = sealing.open_bytes(&bytes, KEY);
            }
            let json = serde_json::json!({
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_at_ms": expires_at_ms,
            });
            let mut value = [0u8; FINGERPRINT_LEN].to_vec();
            value.extend_from_slice(PLAIN);
            value.extend_from_slice(json.to_string().as_bytes());
            let _ = Sealing::Plaintext.open(&value, KEY);
        }
    }

    #[test]
    fn debug_shows_the_key_id_only() {
        let debug = format!("{:?}", Sealing::with_key(&[7; 32]));
        assert!(debug.starts_with("Key(id "), "{debug}");
        assert_eq!(debug.len(), "Key(id )".len() + 16);
    }
}
