//! One token fetch for a whole fleet: the protocol a process follows, in its fetch task, when
//! its layer shares tokens through Redis.
//!
//! 1. If a response rejected this process's token, delete it from Redis if it is still the one
//!    stored (compared by fingerprint, in one script) and tell the fleet, whose processes
//!    forget it too: the whole fleet refetches once.
//! 2. Read the token the fleet stored. One that is not the token this process wants replaced
//!    (the one it holds, which expired, reached its refresh point or was rejected) is used as
//!    if this process had fetched it, with the life it has left.
//! 3. Otherwise take the lease (`SET NX PX` with a random owner). The holder fetches from the
//!    source (renewing the lease while it does, within the fetch's own timeout), stores the
//!    token sealed with a TTL of its remaining life, tells the fleet, and lets the lease go
//!    (deleting it only if it still owns it).
//! 4. The others wait for that notice, reading again when it comes (or every few milliseconds
//!    without notices, and every quarter second with them, in case one is lost); if the lease
//!    goes without a token (its holder failed or died: a lease outlives its holder by at most
//!    the lease time), one of them takes it.
//!
//! Every Redis call has its own deadline. A Redis error or a late answer makes this fetch fall
//! back to the source, as a process without Redis would: the layer keeps serving while Redis is
//! down, and shares again as soon as it answers.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use redis::FromRedisValue;
use tokio::time::Instant;

use super::{
    RedisCache,
    connection::RedisConnection,
    key::FleetKeys,
    notices::{self, Notices},
    sealed::{Sealing, fingerprint},
};
use crate::{
    Error, Token,
    cache::{TokenCache, fetch_with_retries, first, later},
};

/// How often a process waiting for the lease holder reads again without notices.
const POLL: Duration = Duration::from_millis(20);
/// The same while notices come in: a read then only makes up for a lost notice.
const POLL_LISTENING: Duration = Duration::from_millis(250);

/// Lets the lease go only if `ARGV[1]` still owns it.
pub(super) const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
/// Extends the lease to `ARGV[2]` ms only if `ARGV[1]` still owns it.
pub(super) const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
/// Reads the token, first deleting it if it is the one whose fingerprint is `ARGV[1]` (rejected
/// here) and then publishing the notice `ARGV[3]` on the channel `ARGV[2]`.
const READ_DROPPING: &str = "local v = redis.call('GET', KEYS[1]) if v and string.sub(v, 1, 16) == ARGV[1] then redis.call('DEL', KEYS[1]) redis.call('PUBLISH', ARGV[2], ARGV[3]) return false end return v";

/// A layer's share of a fleet: its Redis, its keys, how it seals tokens.
pub(crate) struct Fleet {
    connection: RedisConnection,
    keys: FleetKeys,
    sealing: Sealing,
    lease: Duration,
    call_timeout: Duration,
    notices: Option<Notices>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("keys", &self.keys)
            .field("sealing", &self.sealing)
            .field("lease", &self.lease)
            .field("call_timeout", &self.call_timeout)
            .field("notices", &self.notices)
            .finish_non_exhaustive()
    }
}

/// Why a Redis call failed; logged, never shown with a secret (keys hold none).
#[derive(Debug)]
enum CallError {
    Redis(redis::RedisError),
    Late(Duration),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Redis(err) => write!(f, "{err}"),
            CallError::Late(after) => write!(f, "no answer within {after:?}"),
        }
    }
}

impl Fleet {
    pub(crate) fn new(redis: RedisCache, sealing: Sealing, keys: FleetKeys) -> Fleet {
        let notices = redis
            .notices
            .map(|client| Notices::new(client, keys.notices.clone(), redis.call_timeout));
        Fleet {
            connection: redis.connection,
            keys,
            sealing,
            lease: redis.lease,
            call_timeout: redis.call_timeout,
            notices,
        }
    }

    /// A token for `cache`, from the fleet or fetched under its lease; from the source alone
    /// if Redis fails.
    pub(crate) async fn fetch(
        &self,
        cache: &Arc<TokenCache>,
        started: Instant,
    ) -> Result<Token, Error> {
        if let Some(notices) = &self.notices {
            notices.listen(cache);
        }
        let deadline = later(started, cache.settings().fetch_timeout);
        let replacing = cache.replacing();
        // Any token but those being replaced: one with little life left is installed with
        // that life, and refreshed (by one process for all) when it is due.
        let wanted = |token: &Token| {
            !replacing
                .iter()
                .flatten()
                .any(|t| t == token.access_token())
        };
        let read = match cache.last_rejected() {
            // Deleted only if it is still the token stored: a newer one stays.
            Some(rejected) => {
                let named = fingerprint(&rejected);
                let mut read = owned_script(READ_DROPPING, &self.keys.token, &named[..]);
                read.arg(&self.keys.notices)
                    .arg(Notices::message(notices::REJECTED, &named));
                read
            }
            None => redis::cmd("GET").arg(&self.keys.token).clone(),
        };
        loop {
            let stored: Option<Vec<u8>> = match self.call(&read).await {
                Ok(value) => value,
                Err(err) => return self.fall_back(cache, started, &err).await,
            };
            if let Some(token) = self.usable(stored.as_deref(), &wanted) {
                cache.counters.fleet_token();
                return Ok(token);
            }
            let owner = owner();
            let taken: Option<String> = match self
                .call(
                    redis::cmd("SET")
                        .arg(&self.keys.lease)
                        .arg(&owner)
                        .arg("NX")
                        .arg("PX")
                        .arg(millis(self.lease)),
                )
                .await
            {
                Ok(taken) => taken,
                Err(err) => return self.fall_back(cache, started, &err).await,
            };
            if taken.is_some() {
                return self.fetch_under_lease(cache, started, &owner).await;
            }
            // Another process fetches: wait for its token, or for its lease to go.
            cache.counters.fleet_lease_wait();
            let mut notice = self.notices.as_ref().map(Notices::stored);
            loop {
                let listening = self.notices.as_ref().is_some_and(Notices::is_listening);
                let poll = if listening { POLL_LISTENING } else { POLL };
                let wake = tokio::time::sleep_until(later(Instant::now(), poll).min(deadline));
                match notice {
                    Some(notice) => drop(first(notice, wake).await),
                    None => wake.await,
                }
                if Instant::now() >= deadline {
                    return Err(Error::Timeout(cache.settings().fetch_timeout));
                }
                // Listen again before reading: a notice sent after the read is not lost.
                notice = self.notices.as_ref().map(Notices::stored);
                let mut both = redis::pipe();
                both.get(&self.keys.token).pttl(&self.keys.lease);
                let (stored, lease_left): (Option<Vec<u8>>, i64) = match self.call_all(&both).await
                {
                    Ok(answer) => answer,
                    Err(err) => return self.fall_back(cache, started, &err).await,
                };
                if let Some(token) = self.usable(stored.as_deref(), &wanted) {
                    cache.counters.fleet_token();
                    return Ok(token);
                }
                if lease_left < 0 {
                    break;
                }
            }
        }
    }

    /// The token in `value`, if it opens and is `wanted`.
    fn usable(&self, value: Option<&[u8]>, wanted: &impl Fn(&Token) -> bool) -> Option<Token> {
        let (token, _left) = self.sealing.open(value?, &self.keys.token)?;
        wanted(&token).then_some(token)
    }

    async fn fetch_under_lease(
        &self,
        cache: &TokenCache,
        started: Instant,
        owner: &str,
    ) -> Result<Token, Error> {
        let renew = async {
            loop {
                tokio::time::sleep(self.lease / 3).await;
                let renewed: Result<i64, _> = self
                    .call(owned_script(RENEW, &self.keys.lease, owner).arg(millis(self.lease)))
                    .await;
                if let Err(err) = renewed {
                    cache.counters.fleet_redis_error();
                    tracing::debug!(target: "tower_bearer", error = %err, "fleet lease not renewed");
                }
            }
        };
        // The fetch ends within its timeout; the renewal never does, and stops with it.
        let result = first(fetch_with_retries(cache, started), renew)
            .await
            .unwrap_or_else(|| Err(Error::Aborted));
        if let Ok(token) = &result {
            let life = token
                .expires_in()
                .unwrap_or(cache.settings().default_lifetime);
            let value = SystemTime::now()
                .checked_add(life)
                .and_then(|expires_at| self.sealing.seal(token, expires_at, &self.keys.token));
            if let (Some(value), false) = (value, life.is_zero()) {
                let mut store = redis::pipe();
                store
                    .cmd("SET")
                    .arg(&self.keys.token)
                    .arg(value)
                    .arg("PX")
                    .arg(millis(life))
                    .ignore()
                    .publish(
                        &self.keys.notices,
                        Notices::message(notices::STORED, &fingerprint(token.access_token())),
                    )
                    .ignore();
                let stored: Result<(), _> = self.call_all(&store).await;
                if let Err(err) = stored {
                    cache.counters.fleet_redis_error();
                    tracing::warn!(target: "tower_bearer", error = %err, "token fetched but not shared with the fleet");
                }
            }
        }
        let released: Result<i64, _> = self
            .call(&owned_script(RELEASE, &self.keys.lease, owner))
            .await;
        if let Err(err) = released {
            cache.counters.fleet_redis_error();
            tracing::debug!(target: "tower_bearer", error = %err, "fleet lease not released; it expires");
        }
        result
    }

    /// Redis failed: fetch from the source, as a process without a fleet would.
    async fn fall_back(
        &self,
        cache: &TokenCache,
        started: Instant,
        err: &CallError,
    ) -> Result<Token, Error> {
        tracing::warn!(target: "tower_bearer", error = %err, "fleet cache unavailable; fetching locally");
        cache.counters.fleet_redis_error();
        cache.counters.fleet_fallback();
        fetch_with_retries(cache, started).await
    }

    /// One Redis command, within its own deadline.
    async fn call<T: FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, CallError> {
        let mut connection = self.connection.clone();
        within(self.call_timeout, command.query_async(&mut connection)).await
    }

    /// One pipeline of commands, within one deadline.
    async fn call_all<T: FromRedisValue>(
        &self,
        commands: &redis::Pipeline,
    ) -> Result<T, CallError> {
        let mut connection = self.connection.clone();
        within(self.call_timeout, commands.query_async(&mut connection)).await
    }
}

async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(CallError::Redis(err)),
        Err(_) => Err(CallError::Late(limit)),
    }
}

/// `EVAL script 1 key owner`: one of the scripts above on a key `owner` (a lease owner, or a
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
