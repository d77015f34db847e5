//! [`AuthLayerBuilder`]: every setting of an [`AuthLayer`](super::layer::AuthLayer), checked by
//! [`build`](AuthLayerBuilder::build) before any fetch.

use std::{fmt, sync::Arc, time::Duration};

use http::HeaderName;
use tokio::runtime::Handle;

use super::{
    layer::{AuthLayer, DEFAULT_REPLAY_LIMIT, LONGEST_SETTING},
    layer_state::LayerState,
};
use crate::{
    Error,
    cache::{Backoff, CacheSettings, TokenCache},
    origin::{Origin, OriginPolicy},
};

/// Settings of an [`AuthLayer`]; made by [`AuthLayer::builder`], checked by
/// [`build`](Self::build).
///
/// | setting | default | meaning |
/// |---|---|---|
/// | [`expiry_margin`](Self::expiry_margin) | 30 s | the refresh target: a token should be replaced this long before it expires (at most half its lifetime); it is still sent until [`EXPIRY_ALLOWANCE`](super::layer::EXPIRY_ALLOWANCE) before expiry |
/// | [`default_lifetime`](Self::default_lifetime) | 1 h | lifetime assumed when the endpoint sends no `expires_in` |
/// | [`fetch_timeout`](Self::fetch_timeout) | 30 s | longest a token fetch (all its attempts) may take before waiting callers get [`Error::Timeout`] |
/// | [`fetch_attempts`](Self::fetch_attempts) | 3 | token requests one fetch may make when they fail transiently |
/// | [`retry_unauthorized`](Self::retry_unauthorized) | on | after a 401, fetch a new token and resend once when the body allows |
/// | [`refresh_ahead`](Self::refresh_ahead) | on | refresh in the background in the last fifth of the time before the refresh target (at most 5 min), jittered |
/// | [`backoff`](Self::backoff) | 200 ms, 30 s | exponential backoff with jitter after failed fetches and after fresh tokens rejected in a row; `Retry-After` honoured |
/// | [`replay_limit`](Self::replay_limit) | 64 KiB | most bytes of a streaming body kept for a resend |
/// | [`scheme`](Self::scheme) | `Bearer` | the word before the token in the header |
/// | [`header_name`](Self::header_name) | `Authorization` | the header the token goes in |
/// | [`origin`](Self::origin) | every origin | limits where the token goes |
/// | [`channel_origin`](Self::channel_origin) | none: refused | where requests addressed by path alone (tonic) go |
/// | [`allow_http`](Self::allow_http) | off | plain `http` to non-loopback hosts |
/// | [`max_token_uses`](Self::max_token_uses) | no limit | requests per token, for use-limited tokens |
/// | [`runtime`](Self::runtime) | the caller's | the Tokio runtime fetches run on |
/// | [`name`](Self::name) | `default` | labels the layer's metrics and traces |
#[must_use]
pub struct AuthLayerBuilder {
    source: Box<dyn crate::source::DynTokenSource>,
    settings: CacheSettings,
    header_name: HeaderName,
    retry: bool,
    replay_limit: usize,
    /// As given; parsed by `build`.
    origins: Vec<String>,
    channel_origin: Option<String>,
    allow_http: bool,
    /// Checked and keyed by `build`.
    #[cfg(feature = "redis")]
    distributed: Option<crate::distributed::RedisCache>,
}

impl AuthLayerBuilder {
    /// The default settings around `source`; see [`AuthLayer::builder`].
    pub(super) fn new(source: Box<dyn crate::source::DynTokenSource>) -> Self {
        AuthLayerBuilder {
            source,
            settings: CacheSettings::default(),
            header_name: http::header::AUTHORIZATION,
            retry: true,
            replay_limit: DEFAULT_REPLAY_LIMIT,
            origins: Vec::new(),
            channel_origin: None,
            allow_http: false,
            #[cfg(feature = "redis")]
            distributed: None,
        }
    }

    /// Shares tokens with every process that uses the same Redis, key prefix, fleet key and
    /// source identity: one token fetch per token lifetime for the whole fleet (see
    /// [`crate::distributed`]). `build` fails if the cache has no encryption key (and was not
    /// told to store plain text), if the source cannot tell its tokens from another source's
    /// and the cache has no [`fleet_key`](crate::distributed::RedisCache::fleet_key), or with
    /// [`max_token_uses`](Self::max_token_uses).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn distributed(mut self, cache: crate::distributed::RedisCache) -> Self {
        self.distributed = Some(cache);
        self
    }

    /// The refresh target: a token should be replaced this long before it expires. Clamped to
    /// half the token's lifetime, so a short-lived token is not refreshed on arrival.
    ///
    /// Reaching the target does not end the token's use: until [`EXPIRY_ALLOWANCE`](super::layer::EXPIRY_ALLOWANCE) before its
    /// expiry (at most a tenth of its lifetime) it is still sent while the refresh runs or the
    /// endpoint fails, so an outage shorter than the margin fails no request. Such requests are
    /// counted in [`Stats::served_stale`](crate::Stats::served_stale). Default: 30 s
    /// ([`DEFAULT_EXPIRY_MARGIN`](super::layer::DEFAULT_EXPIRY_MARGIN)).
    pub fn expiry_margin(mut self, margin: Duration) -> Self {
        self.settings.expiry_margin = margin;
        self
    }

    /// The lifetime assumed for a token whose response had no `expires_in`. Finite, so such a
    /// token is still renewed now and then; a 401 renews it at once in any case. Must not be
    /// zero. Default: 1 h ([`DEFAULT_LIFETIME`](super::layer::DEFAULT_LIFETIME)).
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.settings.default_lifetime = lifetime;
        self
    }

    /// The longest a token fetch may run, all its attempts together. Every caller waiting on it
    /// then gets [`Error::Timeout`], and the next fetch waits for the backoff. Each waiter also
    /// gives up by itself one second after this, whichever runtime runs the fetch. Must not be
    /// zero. Default: 30 s ([`DEFAULT_FETCH_TIMEOUT`](super::layer::DEFAULT_FETCH_TIMEOUT)).
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.settings.fetch_timeout = timeout;
        self
    }

    /// How many token requests one fetch may make when they fail transiently (a connection
    /// error, 5xx, 429, `temporarily_unavailable`; the source decides, see
    /// [`TokenSource::retry_within_fetch`](crate::TokenSource::retry_within_fetch)), pausing 100-200 ms, then 200-400 ms, ... or for the
    /// endpoint's `Retry-After`, within the [fetch timeout](Self::fetch_timeout). A blip of the
    /// token endpoint then costs the waiting callers latency, not errors. `1` turns retries off;
    /// `0` is refused. Default: 3.
    pub fn fetch_attempts(mut self, attempts: u32) -> Self {
        self.settings.fetch_attempts = attempts;
        self
    }

    /// Whether a request rejected with 401 is resent once with a new token (when its body can
    /// be replayed). With it off, the 401 still makes the next request use a new token, and
    /// requests skip the copy of their head that a resend needs. Default: on.
    pub fn retry_unauthorized(mut self, retry: bool) -> Self {
        self.retry = retry;
        self
    }

    /// Whether to refresh the token in the background before its refresh target: during the
    /// last fifth of the time before it (at most 5 minutes), from a random point in the first
    /// half of that window so that a fleet of processes spreads its refreshes. Requests keep
    /// using the current token meanwhile, so in steady state no request waits for a fetch. On
    /// by default.
    ///
    /// Off, the refresh starts at the target itself, still in the background: requests keep
    /// sending the token until its expiry less [`EXPIRY_ALLOWANCE`](super::layer::EXPIRY_ALLOWANCE). If the refresh fails, it is
    /// tried again after the [backoff](Self::backoff) while the token is still sent.
    pub fn refresh_ahead(mut self, on: bool) -> Self {
        self.settings.refresh_ahead = on;
        self
    }

    /// Backoff after failed fetches: after the `n`th failure in a row, no new fetch goes out for
    /// a random time between half and all of `min(max, base * 2^(n-1))`, or for the endpoint's
    /// `Retry-After` (on 429 and 503) if longer. Meanwhile callers with no usable token fail
    /// fast with the last error; callers with one keep sending it.
    ///
    /// The same steps space the fetches when the API keeps rejecting fresh tokens: the first
    /// rejected token is replaced at once, each next one is kept (its requests get their 401)
    /// for the next step before another fetch. Defaults: 200 ms and 30 s.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.settings.backoff = Backoff {
            base,
            max: max.max(base),
        };
        self
    }

    /// One header per token, no per-core copies: for a keyed layer's keys, whose services send
    /// the cache's own header.
    pub(crate) fn without_header_copies(mut self) -> Self {
        self.settings.header_copies = false;
        self
    }

    /// Seeds the jitter of backoff and refresh-ahead, for reproducible tests. Default: a random
    /// seed.
    #[doc(hidden)]
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.settings.jitter_seed = Some(seed);
        self
    }

    /// The most bytes of a request body kept so the request can be resent after a 401: a
    /// streaming body (see [`ReplayableBody`](crate::replay::ReplayableBody)) that streams more,
    /// or a `String` or `Vec<u8>` body that is longer, is sent once and not resent. Bodies of
    /// shared bytes (`Bytes`, `Full<Bytes>`, static slices) are resent whatever their size: their
    /// copy is a reference count. See the table in [`crate::replay`]. Default: 64 KiB
    /// ([`DEFAULT_REPLAY_LIMIT`](super::layer::DEFAULT_REPLAY_LIMIT)).
    pub fn replay_limit(mut self, bytes: usize) -> Self {
        self.replay_limit = bytes;
        self
    }

    /// Limits the token to requests for `origin` (`scheme://host[:port]`); repeatable. Requests
    /// to other origins pass through untouched. Unset, every request with an absolute `https`
    /// URL (or `http` to loopback) gets the token; see [`crate::origin`]. An origin that is not
    /// an `http` or `https` URL without a path makes [`build`](Self::build) fail.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origins.push(origin.into());
        self
    }

    /// Where the inner service sends requests addressed by path alone: a tonic `Channel`
    /// (give it the endpoint's origin, such as `https://api.example.com:443`) or a hyper
    /// connection. Such requests are then judged as if they went there, once, at
    /// [`build`](Self::build): plain `http` to a host that is not a loopback address makes
    /// `build` fail with [`Error::InsecureRequest`] (unless [`allow_http`](Self::allow_http)),
    /// and an origin outside those given with [`origin`](Self::origin) sends them without the
    /// token. Unset, a request addressed by path alone fails with
    /// [`Error::UnknownDestination`] rather than send the token to a destination the layer
    /// cannot see.
    pub fn channel_origin(mut self, origin: impl Into<String>) -> Self {
        self.channel_origin = Some(origin.into());
        self
    }

    /// Allows sending the token over plain `http` (and `ws`) to hosts that are not loopback
    /// addresses. Without it such requests fail with [`Error::InsecureRequest`]; loopback
    /// addresses (`127.0.0.0/8`, `[::1]`, `localhost`) never need it. Schemes other than
    /// `https`, `wss`, `http` and `ws` never get the token. Default: off.
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.allow_http = allow;
        self
    }

    /// The header the token goes in: `Authorization` unless set. For an API that wants, say,
    /// `X-Api-Token: <token>`, set the header and an empty [`scheme`](Self::scheme).
    pub fn header_name(mut self, name: HeaderName) -> Self {
        self.header_name = name;
        self
    }

    /// The authentication scheme written before the token: `Bearer` unless set; empty for the
    /// token alone. Some APIs want it spelled otherwise (some document `bearer`). A scheme that is not an HTTP token (letters, digits and
    /// ``!#$%&'*+-.^_`|~``) makes [`build`](Self::build) fail.
    pub fn scheme(mut self, scheme: impl Into<String>) -> Self {
        self.settings.scheme = Arc::from(scheme.into());
        self
    }

    /// Use each token for at most `uses` requests, then fetch a new one: for APIs whose tokens
    /// are good for a limited number of calls (a `single-use` scope is `1`). Fetches
    /// stay single-flight: one fetch per `uses` requests, never more. `0` means no limit. Not
    /// with `distributed` (feature `redis`): each process would spend the whole budget.
    /// Default: no limit.
    pub fn max_token_uses(mut self, uses: u32) -> Self {
        self.settings.max_uses = (uses > 0).then_some(uses);
        self
    }

    /// Names the layer: the `layer` label of its metrics and the `layer` field of its tracing
    /// spans and events (see [`crate::stats`]), so that several layers in one process (one per
    /// API, say) report apart. `default` unless set; an empty name makes
    /// [`build`](Self::build) fail.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.settings.name = crate::stats::LayerName::new(&name.into());
        self
    }

    /// Runs every token fetch on this runtime instead of the caller's. For clients driven
    /// from several runtimes, or from a runtime that is not always driven (a synchronous
    /// wrapper's `block_on` on a helper thread): a fetch then completes as long as this runtime
    /// runs, and callers outside any runtime can wait on it too. The runtime needs timers.
    /// Default: the runtime of the caller whose request starts the fetch.
    pub fn runtime(mut self, runtime: Handle) -> Self {
        self.settings.runtime = Some(runtime);
        self
    }

    /// Checks the settings and builds the layer.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a scheme that is not an HTTP token, an origin that is not
    /// `scheme://host[:port]`, a zero fetch timeout, default lifetime or attempt count, a
    /// duration setting longer than a year; [`Error::NoTimer`] for a [`runtime`](Self::runtime) without timers.
    pub fn build(self) -> Result<AuthLayer, Error> {
        let scheme = &*self.settings.scheme;
        if !scheme.bytes().all(crate::challenge::is_tchar) {
            return Err(Error::config(format!(
                "authorization scheme {scheme:?} is not an HTTP token"
            )));
        }
        if self.settings.fetch_timeout.is_zero() {
            return Err(Error::config("fetch_timeout must be longer than zero"));
        }
        if self.settings.default_lifetime.is_zero() {
            return Err(Error::config("default_lifetime must be longer than zero"));
        }
        if self.settings.name.as_str().is_empty() {
            return Err(Error::config("a layer's name must not be empty"));
        }
        if self.settings.fetch_attempts == 0 {
            return Err(Error::config("fetch_attempts must be at least 1"));
        }
        let durations = [
            ("expiry_margin", self.settings.expiry_margin),
            ("default_lifetime", self.settings.default_lifetime),
            ("fetch_timeout", self.settings.fetch_timeout),
            ("backoff", self.settings.backoff.max),
        ];
        if let Some((name, _)) = durations.iter().find(|(_, d)| *d > LONGEST_SETTING) {
            return Err(Error::config(format!("{name} must be at most a year")));
        }
        if let Some(runtime) = &self.settings.runtime {
            let _entered = runtime.enter();
            if !crate::deadline::has_timers() {
                return Err(Error::NoTimer);
            }
        }
        let origins = self
            .origins
            .iter()
            .map(|raw| Origin::parse(raw))
            .collect::<Result<Vec<_>, _>>()?;
        let channel = self
            .channel_origin
            .as_deref()
            .map(Origin::parse)
            .transpose()?;
        let policy = OriginPolicy::new(origins, self.allow_http, channel.clone())?;
        #[cfg(feature = "redis")]
        let mut this = self;
        #[cfg(not(feature = "redis"))]
        let this = self;
        #[cfg(feature = "redis")]
        if let Some(cache) = this.distributed.take() {
            if this.settings.max_uses.is_some() {
                // Each process would spend the whole budget of the one token they share.
                return Err(Error::config(
                    "max_token_uses cannot be combined with distributed: every process would \
                     spend the whole use budget of the token they share",
                ));
            }
            let fleet = cache.into_fleet(this.source.identity().as_deref())?;
            this.settings.shared = Some(Arc::new(fleet));
        }
        #[cfg(feature = "jose")]
        if this.header_name != http::header::AUTHORIZATION && this.source.dpop_key().is_some() {
            return Err(Error::config(
                "a DPoP-bound token goes in the Authorization header; do not set header_name \
                 with a source that has a DPoP key",
            ));
        }
        Ok(this.assemble(policy, channel.as_ref()))
    }

    /// The layer: the checks of `build` passed (or, from `AuthLayer::new`, the defaults did).
    /// `channel` is where requests addressed by path alone go.
    #[cfg_attr(not(feature = "jose"), allow(unused_mut, unused_variables))]
    pub(super) fn assemble(mut self, policy: OriginPolicy, channel: Option<&Origin>) -> AuthLayer {
        #[cfg(feature = "jose")]
        let dpop = self.source.dpop_key().map(|key| {
            self.settings.dpop = true;
            crate::middleware::dpop::RequestDpop::new(key, channel.map(Origin::serialize))
        });
        AuthLayer {
            state: Arc::new(LayerState {
                cache: TokenCache::new(self.source, self.settings),
                policy,
                header_name: self.header_name,
                retry: self.retry,
                replay_limit: self.replay_limit,
                #[cfg(feature = "jose")]
                dpop,
            }),
        }
    }
}

impl fmt::Debug for AuthLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayerBuilder")
            .field("source", &self.source.type_name())
            .field("settings", &self.settings)
            .field("header_name", &self.header_name)
            .field("retry", &self.retry)
            // Counted, not shown: an origin given by mistake with credentials is refused by
            // `build`, and must not reach a log before that.
            .field("origins", &self.origins.len())
            .field("channel_origin", &self.channel_origin.is_some())
            .finish_non_exhaustive()
    }
}
