//! One token fetch for a whole fleet: the protocol a process follows, in its fetch task, when
//! its layer shares tokens through Redis.
//!
//! 1. If a response rejected this process's token, delete it from Redis if it is still the one
//!    stored (compared by fingerprint, in one script) and tell the fleet, whose processes
//!    forget it too: the whole fleet refetches once.
//! 2. Read the token the fleet stored. One that is not the token this process wants replaced
//!    (the one it holds, which expired, reached its refresh point or was rejected) is used as
//!    if this process had fetched it, with the life it has left.
//! 3. Otherwise take the lease (`SET NX PX` with a random owner). Steps 1 to 3 are one script,
//!    so no token stored between the read and the lease is fetched again. The holder fetches
//!    from the source (renewing the lease while it does, within
//!    the fetch's own timeout), then in one script stores the token sealed with a TTL of its
//!    remaining life, tells the fleet, and lets the lease go (deleting it only if it still owns
//!    it). The script stores nothing if the fleet's token was revoked since the lease was
//!    taken (the revocation epoch changed): that token, fetched before the revocation, is
//!    dropped, and the fetch starts over.
//! 4. The others wait for that notice, reading again when it comes (or every few milliseconds
//!    without notices, and every quarter second with them, in case one is lost); if the lease
//!    goes without a token (its holder failed or died: a lease outlives its holder by at most
//!    the lease time), one of them takes it.
//!
//! 5. A revocation ([`AuthLayer::revoke`](crate::AuthLayer::revoke)) deletes the stored token,
//!    moves the revocation epoch on and tells the fleet, whose processes forget what they hold
//!    and drop what their fetches in flight bring back.
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
    scripts::{
        ACQUIRE, FOUND, LEASED, RELEASE, RENEW, REVOKE, STORE, millis, owned_script, owner, script,
    },
    sealed::{Sealing, fingerprint},
};
use crate::{
    Error, Token,
    cache::{BoxFuture, SharedCache, SharedTokens},
    deadline::{first, later},
};

/// How often a process waiting for the lease holder reads again without notices.
const POLL: Duration = Duration::from_millis(20);
/// The same while notices come in: a read then only makes up for a lost notice.
const POLL_LISTENING: Duration = Duration::from_millis(250);

/// What a fetch under the lease came to.
enum Leased {
    /// The source's answer: a token (stored for the fleet if Redis took it), or an error.
    Fetched(Result<Token, Error>),
    /// The fleet's token was revoked while the source was asked: what it brought back was
    /// fetched before the revocation, and is dropped.
    Revoked,
}

/// A layer's share of a fleet: its Redis, its keys, how it seals tokens.
pub(crate) struct Fleet {
    connection: RedisConnection,
    keys: FleetKeys,
    sealing: Sealing,
    lease: Duration,
    call_timeout: Duration,
    notices: Option<Notices>,
    /// This process's id in the fleet's notices.
    id: Arc<str>,
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

impl SharedTokens for Fleet {
    fn fetch<'a>(
        &'a self,
        cache: &'a SharedCache,
        started: Instant,
    ) -> BoxFuture<'a, Result<Token, Error>> {
        Box::pin(Fleet::fetch(self, cache, started))
    }

    fn revoke<'a>(&'a self, cache: &'a SharedCache) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(Fleet::revoke(self, cache))
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
        let id: Arc<str> = owner().into();
        let notices = redis.notices.map(|client| {
            Notices::new(
                client,
                keys.notices.clone(),
                redis.call_timeout,
                Arc::clone(&id),
                redis.connection.clone(),
                keys.epoch.clone(),
            )
        });
        Fleet {
            connection: redis.connection,
            keys,
            sealing,
            lease: redis.lease,
            call_timeout: redis.call_timeout,
            notices,
            id,
        }
    }

    /// A token for `cache`, from the fleet or fetched under its lease; from the source alone
    /// if Redis fails.
    async fn fetch(&self, cache: &SharedCache, started: Instant) -> Result<Token, Error> {
        if let Some(notices) = &self.notices {
            notices.listen(cache);
        }
        let deadline = later(started, cache.fetch_timeout());
        let replacing = cache.replacing();
        // Any token but those being replaced: one with little life left is installed with
        // that life, and refreshed (by one process for all) when it is due.
        let wanted = |token: &Token| {
            !replacing
                .iter()
                .flatten()
                .any(|t| t == token.access_token())
        };
        // Fingerprints of the rejected token (deleted from Redis if still stored) and of the
        // tokens being replaced (not taken back from Redis).
        let rejected = cache.last_rejected().map(|token| fingerprint(&token));
        let replaced: Vec<_> = replacing.iter().flatten().map(fingerprint).collect();
        // Set once a stored token this process cannot use (sealed with a key it does not
        // hold, say) was handed back: the next call takes the lease whatever is stored.
        let mut past_stored = false;
        loop {
            let owner = owner();
            let mut acquire = script(
                ACQUIRE,
                &[&self.keys.token, &self.keys.lease, &self.keys.epoch],
            );
            let none: &[u8] = b"";
            acquire
                .arg(rejected.as_ref().map_or(none, |f| &f[..]))
                .arg(&self.keys.notices)
                .arg(rejected.map_or_else(Vec::new, |f| Notices::message(notices::REJECTED, &f)))
                .arg(replaced.first().map_or(none, |f| &f[..]))
                .arg(replaced.get(1).map_or(none, |f| &f[..]))
                .arg(&owner)
                .arg(millis(self.lease))
                .arg(if past_stored { "1" } else { "0" });
            let subscriptions = self.subscriptions();
            let (outcome, stored, epoch): (i64, Vec<u8>, String) = match self.call(&acquire).await {
                Ok(answer) => answer,
                Err(err) => return self.fall_back(cache, started, &err).await,
            };
            match outcome {
                FOUND => {
                    if let Some(token) = self.usable(Some(&stored[..]), &wanted) {
                        if !self.obtained(&epoch, subscriptions) {
                            continue;
                        }
                        cache.counters().fleet_token();
                        return Ok(token);
                    }
                    past_stored = true;
                    continue;
                }
                LEASED => match self.fetch_under_lease(cache, started, &owner, &epoch).await {
                    Leased::Fetched(result) => return result,
                    Leased::Revoked => {
                        tracing::debug!(target: "tower_bearer", "token fetched while the fleet's token was revoked: dropped; fetching again");
                        if Instant::now() >= deadline {
                            return Err(Error::Timeout(cache.fetch_timeout()));
                        }
                        continue;
                    }
                },
                _ => {}
            }
            // Another process fetches: wait for its token, or for its lease to go.
            cache.counters().fleet_lease_wait();
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
                    return Err(Error::Timeout(cache.fetch_timeout()));
                }
                // Listen again before reading: a notice sent after the read is not lost.
                notice = self.notices.as_ref().map(Notices::stored);
                let mut read = redis::pipe();
                read.get(&self.keys.token)
                    .pttl(&self.keys.lease)
                    .get(&self.keys.epoch);
                let subscriptions = self.subscriptions();
                let (stored, lease_left, epoch): (Option<Vec<u8>>, i64, Option<String>) =
                    match self.call_all(&read).await {
                        Ok(answer) => answer,
                        Err(err) => return self.fall_back(cache, started, &err).await,
                    };
                if let Some(token) = self.usable(stored.as_deref(), &wanted) {
                    if !self.obtained(epoch.as_deref().unwrap_or("0"), subscriptions) {
                        break;
                    }
                    cache.counters().fleet_token();
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

    /// Fetches from the source under the lease `owner` holds, taken at the revocation
    /// `epoch`, and stores the token for the fleet unless it was revoked meanwhile.
    async fn fetch_under_lease(
        &self,
        cache: &SharedCache,
        started: Instant,
        owner: &str,
        epoch: &str,
    ) -> Leased {
        let renew = async {
            loop {
                tokio::time::sleep(self.lease / 3).await;
                let renewed: Result<i64, _> = self
                    .call(owned_script(RENEW, &self.keys.lease, owner).arg(millis(self.lease)))
                    .await;
                match renewed {
                    Ok(1) => {}
                    // Gone (this process stalled past it): another may fetch too, which costs
                    // one more token request, nothing else.
                    Ok(_) => {
                        tracing::debug!(target: "tower_bearer", "fleet lease lost while fetching")
                    }
                    Err(err) => {
                        cache.counters().fleet_redis_error();
                        tracing::debug!(target: "tower_bearer", error = %err, "fleet lease not renewed");
                    }
                }
            }
        };
        // The fetch ends within its timeout; the renewal never does, and stops with it.
        let result = first(cache.fetch_from_source(started), renew)
            .await
            .unwrap_or_else(|| Err(Error::Aborted));
        let token = match result {
            Ok(token) => token,
            Err(err) => {
                self.release(cache, owner).await;
                return Leased::Fetched(Err(err));
            }
        };
        let life = token.expires_in().unwrap_or(cache.default_lifetime());
        let value = SystemTime::now()
            .checked_add(life)
            .and_then(|expires_at| self.sealing.seal(&token, expires_at, &self.keys.token));
        let Some(value) = value.filter(|_| !life.is_zero()) else {
            self.release(cache, owner).await;
            self.obtained_elsewhere();
            return Leased::Fetched(Ok(token));
        };
        let mut store = script(
            STORE,
            &[&self.keys.token, &self.keys.epoch, &self.keys.lease],
        );
        store
            .arg(value)
            .arg(millis(life))
            .arg(epoch)
            .arg(&self.keys.notices)
            .arg(Notices::message(
                notices::STORED,
                &fingerprint(token.access_token()),
            ))
            .arg(owner);
        match self.call::<i64>(&store).await {
            Ok(1) => {
                // Stored at that epoch: nothing revoked it since.
                self.obtained(epoch, self.subscriptions());
                Leased::Fetched(Ok(token))
            }
            Ok(_) => Leased::Revoked,
            Err(err) => {
                // Redis failed, not the token: used here, as without a fleet.
                cache.counters().fleet_redis_error();
                tracing::warn!(target: "tower_bearer", error = %err, "token fetched but not shared with the fleet");
                self.release(cache, owner).await;
                self.obtained_elsewhere();
                Leased::Fetched(Ok(token))
            }
        }
    }

    /// Lets the lease go if `owner` still holds it.
    async fn release(&self, cache: &SharedCache, owner: &str) {
        let released: Result<i64, _> = self
            .call(&owned_script(RELEASE, &self.keys.lease, owner))
            .await;
        if let Err(err) = released {
            cache.counters().fleet_redis_error();
            tracing::debug!(target: "tower_bearer", error = %err, "fleet lease not released; it expires");
        }
    }

    /// Revokes the fleet's token (see [`AuthLayer::revoke`](crate::AuthLayer::revoke)): deletes
    /// it from Redis, moves the revocation epoch on so that no fetch in flight stores what it
    /// brings back, and tells every process to forget what it holds.
    async fn revoke(&self, cache: &SharedCache) -> Result<(), Error> {
        let mut revoke = script(REVOKE, &[&self.keys.token, &self.keys.epoch]);
        revoke
            .arg(&self.keys.notices)
            .arg(format!("{}{}", notices::REVOKED, self.id));
        match self.call::<i64>(&revoke).await {
            Ok(_) => Ok(()),
            Err(err) => {
                cache.counters().fleet_redis_error();
                Err(Error::Fleet(
                    format!("cannot revoke the token the fleet shares: {err}").into(),
                ))
            }
        }
    }

    /// Redis failed: fetch from the source, as a process without a fleet would.
    async fn fall_back(
        &self,
        cache: &SharedCache,
        started: Instant,
        err: &CallError,
    ) -> Result<Token, Error> {
        tracing::warn!(target: "tower_bearer", error = %err, "fleet cache unavailable; fetching locally");
        cache.counters().fleet_redis_error();
        cache.counters().fleet_fallback();
        self.obtained_elsewhere();
        cache.fetch_from_source(started).await
    }

    /// How many times the listener subscribed (0 without notices); see [`Notices::obtained`].
    fn subscriptions(&self) -> u64 {
        self.notices.as_ref().map_or(0, Notices::subscriptions)
    }

    /// This process read a token from the fleet at the revocation `epoch` (as Redis answered
    /// it), in a call that began at `subscriptions`; `false` if it must not use it.
    fn obtained(&self, epoch: &str, subscriptions: u64) -> bool {
        let Some(notices) = &self.notices else {
            return true;
        };
        match epoch.parse() {
            Ok(epoch) => notices.obtained(epoch, subscriptions),
            Err(_) => {
                notices.obtained_elsewhere();
                true
            }
        }
    }

    /// This process uses a token it did not read from the fleet.
    fn obtained_elsewhere(&self) {
        if let Some(notices) = &self.notices {
            notices.obtained_elsewhere();
        }
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
