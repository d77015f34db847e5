//! Notices the processes of a fleet send each other over Redis pub/sub, on a connection of their
//! own: "a token is stored" (processes waiting on the lease holder read it at once instead of
//! at their next poll) and "a token was rejected" (processes still holding it forget it, and
//! fetch through the fleet without a 401 of their own).
//!
//! Notices are a shortcut for stored and rejected tokens: a lost one costs a waiter its next
//! poll, and a process that missed a rejection finds out at its own 401. A revocation must not
//! be missed, though: each time the listener (re)subscribes it reads the fleet's revocation
//! epoch, and forgets a token this process read at an older epoch (it was revoked while nobody
//! listened here). The listener runs in the background, started by the first fetch (which runs
//! on the runtime) and stopped when the layer is dropped; it connects again by itself, with a
//! growing pause, when its connection fails.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
    },
    time::Duration,
};

use futures_core::Stream;
use tokio::sync::Notify;

use super::{
    connection::RedisConnection,
    sealed::{FINGERPRINT_LEN, fingerprint},
};
use crate::{
    cache::{SharedCache, WeakSharedCache},
    deadline::first,
};

/// The notice that a token was stored; its fingerprint follows.
pub(super) const STORED: &str = "stored ";
/// The notice that a token was rejected; its fingerprint follows.
pub(super) const REJECTED: &str = "rejected ";
/// The notice that the fleet's token was revoked: every process but the one that revoked it
/// (its id follows) forgets what it holds.
pub(super) const REVOKED: &str = "revoked ";

/// The first pause before connecting again, doubled after each failure up to [`MOST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MOST_PAUSE: Duration = Duration::from_secs(30);

/// A fleet's listener for notices: how to connect, and what waiters share with it.
pub(crate) struct Notices {
    client: redis::Client,
    channel: String,
    call_timeout: Duration,
    shared: Arc<Shared>,
    /// This process's id in the fleet's notices (it ignores its own revocations, which it
    /// has acted on already).
    id: Arc<str>,
    /// Where the listener reads the revocation epoch when it (re)subscribes.
    connection: RedisConnection,
    epoch_key: String,
}

/// What the listener task and the fetches share.
#[derive(Default)]
struct Shared {
    /// Woken at each notice that a token was stored, and when the listener (re)subscribes
    /// (a notice may have been missed while it was not).
    stored: Notify,
    /// Whether the listener is subscribed now.
    listening: AtomicBool,
    /// Whether a listener task runs (it clears this as it ends, its runtime's shutdown
    /// included, so that the next fetch starts another).
    running: AtomicBool,
    /// Tells the task to end: the layer is gone.
    stop: Notify,
    /// How many times the listener subscribed and read the revocation epoch.
    subscriptions: AtomicU64,
    /// The revocation epoch it read last, plus one (0: none read).
    heard_epoch: AtomicU64,
    /// The revocation epoch at which this process read the token it uses from the fleet, plus
    /// one (0: unknown, a token it fetched without the fleet).
    token_epoch: AtomicU64,
}

impl std::fmt::Debug for Notices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notices")
            .field("channel", &self.channel)
            .field("listening", &self.is_listening())
            .finish_non_exhaustive()
    }
}

impl Drop for Notices {
    fn drop(&mut self) {
        // A permit if the task is not waiting now: it ends at its next look.
        self.shared.stop.notify_one();
    }
}

impl Notices {
    pub(crate) fn new(
        client: redis::Client,
        channel: String,
        call_timeout: Duration,
        id: Arc<str>,
        connection: RedisConnection,
        epoch_key: String,
    ) -> Notices {
        Notices {
            client,
            channel,
            call_timeout,
            shared: Arc::default(),
            id,
            connection,
            epoch_key,
        }
    }

    /// Starts the listener for `cache`, unless one runs. Called from a fetch, on the runtime.
    pub(crate) fn listen(&self, cache: &SharedCache) {
        if self.shared.running.swap(true, SeqCst) {
            return;
        }
        let listener = Listener {
            client: self.client.clone(),
            channel: self.channel.clone(),
            call_timeout: self.call_timeout,
            shared: Arc::clone(&self.shared),
            cache: cache.downgrade(),
            id: Arc::clone(&self.id),
            connection: self.connection.clone(),
            epoch_key: self.epoch_key.clone(),
        };
        tokio::spawn(listener.run());
    }

    /// How many times the listener has subscribed: read before a call that reads a token, and
    /// given to [`obtained`](Self::obtained) after it.
    pub(crate) fn subscriptions(&self) -> u64 {
        self.shared.subscriptions.load(SeqCst)
    }

    /// This process read a token from the fleet at the revocation `epoch` (its call began at
    /// `subscriptions`). `false` if the token must not be used: the listener (re)subscribed
    /// meanwhile and found a later epoch, a revocation it could not have heard.
    pub(crate) fn obtained(&self, epoch: u64, subscriptions: u64) -> bool {
        let epoch = epoch.saturating_add(1);
        self.shared.token_epoch.store(epoch, SeqCst);
        // The listener stores what it read before it looks at `token_epoch`, and this stores
        // `token_epoch` before it looks at what the listener read: one of the two sees the other.
        self.shared.subscriptions.load(SeqCst) == subscriptions
            || self.shared.heard_epoch.load(SeqCst) <= epoch
    }

    /// This process uses a token it did not read from the fleet (fetched while Redis failed):
    /// no epoch is known for it.
    pub(crate) fn obtained_elsewhere(&self) {
        self.shared.token_epoch.store(0, SeqCst);
    }

    /// Whether notices come in now: waiters may then read Redis rarely.
    pub(crate) fn is_listening(&self) -> bool {
        self.shared.listening.load(SeqCst)
    }

    /// Waits for the next notice that a token was stored. Registered when this is called, so
    /// that a notice coming before the caller awaits it is not lost.
    pub(crate) fn stored(&self) -> impl Future<Output = ()> + '_ {
        let mut notified = Box::pin(self.shared.stored.notified());
        notified.as_mut().enable();
        notified
    }

    /// The notice that the token `named` (by its fingerprint) was stored, or rejected.
    pub(crate) fn message(kind: &str, named: &[u8; FINGERPRINT_LEN]) -> Vec<u8> {
        let mut message = kind.as_bytes().to_vec();
        message.extend_from_slice(named);
        message
    }
}

/// The background task that listens for a fleet's notices.
struct Listener {
    client: redis::Client,
    channel: String,
    call_timeout: Duration,
    shared: Arc<Shared>,
    cache: WeakSharedCache,
    id: Arc<str>,
    connection: RedisConnection,
    epoch_key: String,
}

/// Clears the flags when the task ends, however it ends.
struct Running(Arc<Shared>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.listening.store(false, SeqCst);
        self.0.running.store(false, SeqCst);
    }
}

impl Listener {
    async fn run(self) {
        let _running = Running(Arc::clone(&self.shared));
        let mut pause = FIRST_PAUSE;
        loop {
            if self.cache.is_gone() {
                return;
            }
            let subscribed = tokio::time::timeout(self.call_timeout, async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(&self.channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            })
            .await;
            match subscribed {
                Ok(Ok(pubsub)) => {
                    pause = FIRST_PAUSE;
                    self.catch_up().await;
                    self.shared.listening.store(true, SeqCst);
                    // Notices sent while this process was not listening are lost: waiters read
                    // again now.
                    self.shared.stored.notify_waiters();
                    let mut messages = pubsub.into_on_message();
                    let heard = async {
                        while let Some(message) =
                            std::future::poll_fn(|cx| Pin::new(&mut messages).poll_next(cx)).await
                        {
                            if !self.heard(message.get_payload_bytes()) {
                                return;
                            }
                        }
                    };
                    if first(self.shared.stop.notified(), heard).await.is_some()
                        || self.cache.is_gone()
                    {
                        return;
                    }
                    self.shared.listening.store(false, SeqCst);
                    self.error("connection for fleet notices lost");
                }
                Ok(Err(err)) => self.error(&format!("cannot listen for fleet notices: {err}")),
                Err(_) => self.error("cannot listen for fleet notices: Redis was late"),
            }
            if first(self.shared.stop.notified(), tokio::time::sleep(pause))
                .await
                .is_some()
            {
                return;
            }
            pause = (pause * 2).min(MOST_PAUSE);
        }
    }

    /// Reads the revocation epoch once subscribed: a revocation published while this process
    /// was not listening moved it on, and the token this process read before it is forgotten.
    /// Unread (Redis failed), it is read at the next subscription; the token lives on meanwhile,
    /// as it would without notices.
    async fn catch_up(&self) {
        let mut connection = self.connection.clone();
        let read = tokio::time::timeout(
            self.call_timeout,
            redis::cmd("GET")
                .arg(&self.epoch_key)
                .query_async::<Option<u64>>(&mut connection),
        )
        .await;
        let Ok(Ok(epoch)) = read else {
            self.error("cannot read the fleet's revocation epoch");
            return;
        };
        let epoch = epoch.unwrap_or(0).saturating_add(1);
        self.shared.heard_epoch.store(epoch, SeqCst);
        self.shared.subscriptions.fetch_add(1, SeqCst);
        let token_epoch = self.shared.token_epoch.load(SeqCst);
        if token_epoch != 0 && token_epoch < epoch {
            if let Some(cache) = self.cache.upgrade() {
                cache.forget_revoked_elsewhere();
            }
            self.shared.token_epoch.store(0, SeqCst);
        }
    }

    /// Acts on one notice; `false` once the layer is gone.
    fn heard(&self, message: &[u8]) -> bool {
        let Some(cache) = self.cache.upgrade() else {
            return false;
        };
        let named = |kind: &str| {
            message
                .strip_prefix(kind.as_bytes())
                .and_then(|rest| <[u8; FINGERPRINT_LEN]>::try_from(rest).ok())
        };
        if named(STORED).is_some() {
            cache.counters().fleet_notice();
            self.shared.stored.notify_waiters();
        } else if let Some(rejected) = named(REJECTED) {
            cache.counters().fleet_notice();
            cache.forget_rejected_elsewhere(|token| fingerprint(token) == rejected);
        } else if let Some(by) = message.strip_prefix(REVOKED.as_bytes()) {
            cache.counters().fleet_notice();
            if by != self.id.as_bytes() {
                cache.forget_revoked_elsewhere();
            }
        }
        true
    }

    fn error(&self, what: &str) {
        if let Some(cache) = self.cache.upgrade() {
            cache.counters().fleet_redis_error();
        }
        tracing::debug!(target: "tower_bearer", channel = %self.channel, "{what}");
    }
}
