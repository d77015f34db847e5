//! Where a fleet keeps a token and its lease in Redis.

use sha2::{Digest, Sha256};

/// The Redis keys of one kind of token: the token, the lease on fetching it, its revocation
/// epoch, and the channel of notices about it.
///
/// The keys carry one Redis Cluster hash tag, the hash of what makes the tokens differ, so that they
/// live in one slot and a script may touch both. The hash is all that comes from the source: no
/// secret, URL or client id appears in a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FleetKeys {
    pub(crate) token: String,
    pub(crate) lease: String,
    /// A pub/sub channel, not a key: the processes' notices about this token.
    pub(crate) notices: String,
    /// The revocation epoch: a counter each revocation moves on, so that a fetch that began
    /// before a revocation stores nothing after it.
    pub(crate) epoch: String,
}

impl FleetKeys {
    /// The keys under `prefix` for tokens named `fleet_key` (by hand) of a source whose
    /// identity is `identity` (see [`TokenSource::identity`](crate::TokenSource::identity)).
    /// At least one of them is set: the layer is refused otherwise.
    pub(crate) fn new(prefix: &str, fleet_key: Option<&str>, identity: Option<&str>) -> FleetKeys {
        let mut hash = Sha256::new();
        hash.update(b"tower-bearer fleet key v2\0");
        // Each part with its length first, so that no two pairs of parts hash alike.
        for part in [fleet_key, identity] {
            let part = part.unwrap_or_default().as_bytes();
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        let digest = hash.finalize();
        let tag: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        FleetKeys {
            token: format!("{prefix}:{{{tag}}}:token"),
            lease: format!("{prefix}:{{{tag}}}:lease"),
            notices: format!("{prefix}:{{{tag}}}:notices"),
            epoch: format!("{prefix}:{{{tag}}}:epoch"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_and_lease_share_one_hash_tag_under_the_prefix() {
        let keys = FleetKeys::new("billing", None, Some("https://idp/token client=a"));
        let tag = |key: &str| {
            let open = key.find('{').unwrap();
            let close = key.find('}').unwrap();
            key[open..=close].to_owned()
        };
        assert!(keys.token.starts_with("billing:{"));
        assert!(keys.lease.starts_with("billing:{"));
        assert_eq!(tag(&keys.token), tag(&keys.lease));
        assert_eq!(tag(&keys.token), tag(&keys.notices));
        assert_eq!(tag(&keys.token), tag(&keys.epoch));
        assert_ne!(keys.token, keys.lease);
        assert_ne!(keys.token, keys.notices);
    }

    #[test]
    fn different_identities_or_prefixes_get_different_keys_and_none_shows_in_a_key() {
        let identity = "https://idp.example.com/token client_id=svc-SECRETISH scope=read";
        let a = FleetKeys::new("p", None, Some(identity));
        assert_ne!(
            a,
            FleetKeys::new(
                "p",
                None,
                Some("https://idp.example.com/token client_id=other")
            )
        );
        assert_ne!(a, FleetKeys::new("q", None, Some(identity)));
        assert_eq!(a, FleetKeys::new("p", None, Some(identity)), "stable");
        // A fleet key tells apart the tokens of sources with the same identity (or none), and
        // no fleet key and identity hash like another pair.
        let alice = FleetKeys::new("p", Some("user:alice"), None);
        assert_ne!(alice, FleetKeys::new("p", Some("user:bob"), None));
        assert_ne!(alice, FleetKeys::new("p", None, Some("user:alice")));
        assert_ne!(
            alice,
            FleetKeys::new("p", Some("user:alice"), Some(identity))
        );
        assert_ne!(
            FleetKeys::new("p", Some("ab"), Some("c")),
            FleetKeys::new("p", Some("a"), Some("bc"))
        );
        for key in [&a.token, &a.lease, &a.notices] {
            assert!(
                !key.contains("SECRETISH") && !key.contains("idp.example.com"),
                "{key}"
            );
        }
    }
}
