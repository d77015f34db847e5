//! The Lua scripts the fleet and the Redis store run: each is one atomic step in Redis (a read
//! and a lease, a store fenced by the revocation epoch, a write fenced by a lock), with the
//! commands that call them and the lease owners they compare.

use std::time::Duration;

/// Lets the lease go only if `ARGV[1]` still owns it.
pub(super) const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
/// Extends the lease to `ARGV[2]` ms only if `ARGV[1]` still owns it.
pub(super) const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
/// A fetch's first call, reading the token `KEYS[1]` and taking the lease `KEYS[2]` in one step,
/// so that no token stored between a read and a lease is fetched again:
///
/// 1. if the stored token's fingerprint is `ARGV[1]` (rejected here; empty for none), deletes
///    it and publishes the notice `ARGV[3]` on the channel `ARGV[2]`;
/// 2. a stored token whose fingerprint is neither `ARGV[4]` nor `ARGV[5]` (tokens this process
///    is replacing) is returned, `{2, token, ''}`, unless `ARGV[8]` is `1` (this process could
///    not use what it was given);
/// 3. otherwise takes the lease for the owner `ARGV[6]` for `ARGV[7]` ms if nobody holds it:
///    `{1, ''}`; or `{0, ''}` if another process holds it.
///
/// Each answer ends with the revocation epoch `KEYS[3]`.
pub(super) const ACQUIRE: &str = "local v = redis.call('GET', KEYS[1]) local e = redis.call('GET', KEYS[3]) or '0' \
if v and ARGV[1] ~= '' and string.sub(v, 1, 16) == ARGV[1] then redis.call('DEL', KEYS[1]) redis.call('PUBLISH', ARGV[2], ARGV[3]) v = false end \
if v and ARGV[8] ~= '1' then local f = string.sub(v, 1, 16) if f ~= ARGV[4] and f ~= ARGV[5] then return {2, v, e} end end \
if redis.call('SET', KEYS[2], ARGV[6], 'NX', 'PX', ARGV[7]) then return {1, '', e} end \
return {0, '', e}";
/// [`ACQUIRE`] found a token to use.
pub(super) const FOUND: i64 = 2;
/// [`ACQUIRE`] took the lease: fetch.
pub(super) const LEASED: i64 = 1;
/// Stores the token `ARGV[1]` in `KEYS[1]` for `ARGV[2]` ms and publishes `ARGV[5]` on
/// `ARGV[4]`, unless the revocation epoch `KEYS[2]` is no longer `ARGV[3]`; then lets the
/// lease `KEYS[3]` go if `ARGV[6]` still owns it. 1 if stored.
pub(super) const STORE: &str = "local stored = 0 if (redis.call('GET', KEYS[2]) or '0') == ARGV[3] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) redis.call('PUBLISH', ARGV[4], ARGV[5]) stored = 1 end if redis.call('GET', KEYS[3]) == ARGV[6] then redis.call('DEL', KEYS[3]) end return stored";
/// Revokes the fleet's token: deletes `KEYS[1]`, moves the revocation epoch `KEYS[2]` on (a
/// lease holder fetching now then stores nothing), and publishes `ARGV[2]` on `ARGV[1]`.
pub(super) const REVOKE: &str = "redis.call('DEL', KEYS[1]) redis.call('INCR', KEYS[2]) redis.call('PUBLISH', ARGV[1], ARGV[2]) return 1";

/// `EVAL script n keys...`: one of these scripts on `keys` (all of one hash tag); the
/// caller adds its arguments.
pub(super) fn script(script: &str, keys: &[&str]) -> redis::Cmd {
    let mut command = redis::cmd("EVAL");
    command.arg(script).arg(keys.len());
    for key in keys {
        command.arg(*key);
    }
    command
}

/// `EVAL script 1 key owner`: one of these scripts on a key `owner` (a lease owner, or a
/// fingerprint) names.
pub(super) fn owned_script(script: &str, key: &str, owner: impl redis::ToRedisArgs) -> redis::Cmd {
    let mut command = redis::cmd("EVAL");
    command.arg(script).arg(1).arg(key).arg(owner);
    command
}

pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A random lease owner: 128 bits, hex.
pub(super) fn owner() -> String {
    let mut bytes = [0u8; 16];
    // Without randomness, a fixed owner still works: it only lets another process with the
    // same failure release a lease it does not hold.
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `ARGV[1]` to `KEYS[1]` only if the lock `KEYS[2]` is still held by `ARGV[2]`; 1 if
/// written. (`ARGV[1]` empty: deletes `KEYS[1]` instead.)
pub(super) const WRITE_FENCED: &str = "if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end if ARGV[1] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[1]) end return 1";
