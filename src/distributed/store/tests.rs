use super::{RedisStore, lock::hash_tag};

#[tokio::test]
async fn a_lock_key_shares_its_stores_hash_tag() {
    assert_eq!(hash_tag("{billing}:refresh"), Some("billing"));
    assert_eq!(hash_tag("a{b}c{d}"), Some("b"));
    assert_eq!(hash_tag("a{}b"), None);
    assert_eq!(hash_tag("plain:key"), None);
    assert_eq!(hash_tag("a}b{c"), None);
    let client = redis::Client::open("redis://127.0.0.1:1/").unwrap();
    let connection = client
        .get_connection_manager_lazy(redis::aio::ConnectionManagerConfig::new())
        .unwrap();
    // With a hash tag (which a cluster requires), the lock has the key's tag.
    let store = RedisStore::new(connection, "{billing}:refresh");
    assert_eq!(store.lock_key(), "{billing}:refresh:lock");
    assert_eq!(hash_tag(&store.lock_key()), Some("billing"));
}
