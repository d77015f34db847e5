//! Notices the processes of a fleet send each other over Redis pub/sub, on a connection of their
//! own: "a token is stored" (processes waiting on the lease holder read it at once instead of
//! at their next poll) and "a token was rejected" (processes still holding it forget it, and
//! fetch through the fleet without a 401 of their own).
//!
//! Notices are a shortcut, never needed for correctness: a lost one costs a waiter its next
//! poll, and a process that missed a rejection finds out at its own 401. So the listener runs
//! in the background, started by the first fetch (which runs on the runtime) and stopped when
//! the layer is dropped; it connects again by itself, with a growing pause, when its connection
//! fails.

use std::{
    pin::Pin,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
    time::Duration,
};

use futures_core::Stream;
use tokio::sync::Notify;

use super::sealed::{FINGERPRINT_LEN, fingerprint};
use crate::cache::{TokenCache, first};

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
    ) -> Notices {
        Notices {
            client,
            channel,
            call_timeout,
            shared: Arc::default(),
            id,
        }
    }

    /// Starts the listener for `cache`, unless one runs. Called from a fetch, on the runtime.
    pub(crate) fn listen(&self, cache: &Arc<TokenCache>) {
        if self.shared.running.swap(true, SeqCst) {
            return;
        }
        let listener = Listener {
            client: self.client.clone(),
            channel: self.channel.clone(),
            call_timeout: self.call_timeout,
            shared: Arc::clone(&self.shared),
            cache: Arc::downgrade(cache),
            id: Arc::clone(&self.id),
        };
        tokio::spawn(listener.run());
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
    cache: Weak<TokenCache>,
    id: Arc<str>,
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
            if self.cache.strong_count() == 0 {
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
                        || self.cache.strong_count() == 0
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
            cache.counters.fleet_notice();
            self.shared.stored.notify_waiters();
        } else if let Some(rejected) = named(REJECTED) {
            cache.counters.fleet_notice();
            cache.forget_rejected_elsewhere(|token| fingerprint(token) == rejected);
        } else if let Some(by) = message.strip_prefix(REVOKED.as_bytes()) {
            cache.counters.fleet_notice();
            if by != self.id.as_bytes() {
                cache.forget_revoked_elsewhere();
            }
        }
        true
    }

    fn error(&self, what: &str) {
        if let Some(cache) = self.cache.upgrade() {
            cache.counters.fleet_redis_error();
        }
        tracing::debug!(target: "tower_bearer", channel = %self.channel, "{what}");
    }
}
