//! Refresh-token rotation, persistence and resume, against a stand-in server over HTTP that
//! rotates refresh tokens and revokes the grant when one is reused.

#![cfg(feature = "oauth")]

mod support;

use std::{sync::atomic::Ordering::SeqCst, time::Duration};

use http::{Request, StatusCode};
use http_body_util::Empty;
use support::{
    LostAnswer, StandInEndpoint, StandInIdp,
    processes::{ask_and_reject, each_sent_once, run_workers},
    store::FlakyStore,
};
use tokio::task::JoinSet;
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::{
    AuthLayer, ClientAuth, Error, RefreshTokenGrant,
    store::{FileStore, MemoryStore, StoredToken, TokenStore},
};

fn grant(idp: &StandInIdp, store: impl TokenStore) -> RefreshTokenGrant {
    RefreshTokenGrant::builder(idp.url("/token"))
        .client_id("app")
        .client_secret("app-secret")
        .auth(ClientAuth::Post)
        .store(store)
        .build()
        .unwrap()
}

fn seeded(rt: &str) -> MemoryStore {
    MemoryStore::with(StoredToken::new().with_refresh_token(rt))
}

async fn stored_refresh_token(store: &impl TokenStore) -> Option<String> {
    store
        .load()
        .await
        .unwrap()
        .and_then(|s| s.refresh_token().map(|t| t.secret().to_owned()))
}

#[tokio::test]
async fn a_rotated_refresh_token_replaces_the_old_one_in_the_store() {
    let idp = StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    let store = seeded("rt-0");
    let auth = AuthLayer::new(grant(&idp, store.clone()));

    let token = auth.token().await.unwrap();
    assert_eq!(token.access_token().secret(), "at-1");
    assert!(
        token.refresh_token().is_none(),
        "the refresh token never leaves its grant"
    );
    assert_eq!(stored_refresh_token(&store).await.as_deref(), Some("rt-1"));

    let [req] = idp.requests_to("/token").try_into().unwrap();
    let form = req.form();
    assert!(form.contains(&("grant_type".into(), "refresh_token".into())));
    assert!(form.contains(&("refresh_token".into(), "rt-0".into())));
    assert!(form.contains(&("client_id".into(), "app".into())));
}

/// RFC 8707: a grant's resource indicator goes with every refresh, so the server neither drops
/// it (an MCP server answers `invalid_grant`) nor widens the token to every API.
#[tokio::test]
async fn resource_indicators_are_sent_with_every_refresh() {
    let idp = StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    let grant = RefreshTokenGrant::builder(idp.url("/token"))
        .client_id("app")
        .client_secret("app-secret")
        .auth(ClientAuth::Post)
        .resource("https://mcp.example.com/")
        .store(seeded("rt-0"))
        .build()
        .unwrap();
    let auth = AuthLayer::new(grant);
    let first = auth.token().await.unwrap();
    assert!(auth.invalidate(&first));
    auth.token().await.unwrap();
    let refreshes = idp.requests_to("/token");
    assert_eq!(refreshes.len(), 2);
    for refresh in refreshes {
        let form = refresh.form();
        assert!(form.contains(&("grant_type".into(), "refresh_token".into())));
        assert!(
            form.contains(&("resource".into(), "https://mcp.example.com/".into())),
            "{form:?}"
        );
    }
}

#[tokio::test]
async fn without_rotation_the_old_refresh_token_is_kept() {
    let idp = StandInIdp::start().await;
    idp.state.rotate.store(false, SeqCst);
    idp.add_refresh_token("rt-0");
    let store = seeded("rt-0");
    let auth = AuthLayer::new(grant(&idp, store.clone()));
    let first = auth.token().await.unwrap();
    assert!(auth.invalidate(&first));
    auth.token().await.unwrap();
    assert_eq!(stored_refresh_token(&store).await.as_deref(), Some("rt-0"));
    assert_eq!(idp.refresh_tokens_sent(), ["rt-0", "rt-0"]);
}

#[tokio::test]
async fn ten_thousand_callers_never_send_a_refresh_token_twice() {
    let idp = StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    let auth = AuthLayer::new(grant(&idp, seeded("rt-0")));

    for round in 1..=3 {
        let mut set = JoinSet::new();
        for _ in 0..10_000 {
            let auth = auth.clone();
            set.spawn(async move { auth.token().await.unwrap() });
        }
        let tokens = set.join_all().await;
        assert!(
            tokens
                .iter()
                .all(|t| t.access_token() == tokens[0].access_token())
        );
        assert_eq!(tokens[0].access_token().secret(), format!("at-{round}"));
        // As if the API had rejected it: the next round must refresh.
        auth.invalidate(&tokens[0]);
    }
    assert_eq!(idp.refresh_tokens_sent(), ["rt-0", "rt-1", "rt-2"]);
    assert_eq!(idp.reuse_detected(), 0);
}

#[tokio::test]
async fn a_401_storm_refreshes_once_with_the_current_refresh_token() {
    let idp = StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    let auth = AuthLayer::new(grant(&idp, seeded("rt-0")));
    let svc = ServiceBuilder::new().layer(auth.clone()).service(idp.api());
    let get = || {
        Request::get("https://api.test/")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap()
    };

    assert_eq!(
        svc.clone().oneshot(get()).await.unwrap().status(),
        StatusCode::OK
    );
    // The server revokes the access token in use while 1,000 requests carrying it are held
    // at the API, then rejects them all at once.
    idp.close_api();
    let mut set = JoinSet::new();
    for _ in 0..1_000 {
        let svc = svc.clone();
        set.spawn(async move { svc.oneshot(get()).await.unwrap() });
    }
    while idp.api_waiting() < 1_000 {
        tokio::task::yield_now().await;
    }
    idp.state.access_tokens.lock().unwrap().remove("at-1");
    idp.open_api(2_000);
    for response in set.join_all().await {
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body(), "at-2");
    }
    assert_eq!(
        idp.api_unauthorized(),
        1_000,
        "every request was rejected once"
    );
    assert_eq!(idp.refresh_tokens_sent(), ["rt-0", "rt-1"]);
    assert_eq!(idp.reuse_detected(), 0);
    assert_eq!(auth.stats().retries, 1_000);
}

#[tokio::test]
async fn a_refresh_the_server_never_answers_cannot_wedge_the_grant() {
    let idp = StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    idp.lose_answers(&[LostAnswer::Hang]);
    let source = RefreshTokenGrant::builder(idp.url("/token"))
        .client_id("app")
        .client_secret("app-secret")
        .auth(ClientAuth::Post)
        .store(seeded("rt-0"))
        .request_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let auth = AuthLayer::builder(source)
        .backoff(Duration::ZERO, Duration::ZERO)
        .build()
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        let err = auth.token().await.unwrap_err();
        assert!(
            matches!(&err, Error::Transport(t) if t.is_timeout()),
            "{err:?}"
        );
        // The grant is free again, and the server never acted on the request: the same
        // refresh token works.
        auth.token().await.unwrap()
    })
    .await
    .expect("the grant is not wedged");
    assert_eq!(outcome.access_token().secret(), "at-1");
    assert_eq!(idp.refresh_tokens_sent(), ["rt-0", "rt-0"]);
    assert_eq!(idp.reuse_detected(), 0);
}

#[tokio::test]
async fn a_refresh_refused_before_processing_is_retried_within_the_fetch() {
    let idp = StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    idp.state.unavailable.store(1, SeqCst);
    let auth = AuthLayer::new(grant(&idp, seeded("rt-0")));
    // One call: the 503 is retried inside the fetch, and the caller sees only the token.
    assert_eq!(auth.token().await.unwrap().access_token().secret(), "at-1");
    assert_eq!(idp.refresh_tokens_sent(), ["rt-0", "rt-0"]);
    let stats = auth.stats();
    assert_eq!(
        (stats.fetches, stats.fetch_retries, stats.fetch_failures),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn a_refresh_answered_after_its_caller_gave_up_is_kept_for_the_next_fetch() {
    let idp = StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    idp.lose_answers(&[LostAnswer::Late(Duration::from_millis(400))]);
    let store = seeded("rt-0");
    let auth = AuthLayer::builder(grant(&idp, store.clone()))
        .fetch_timeout(Duration::from_millis(100))
        .backoff(Duration::ZERO, Duration::ZERO)
        .build()
        .unwrap();
    let err = auth.token().await.unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    // The refresh goes on in its own task: the rotated refresh token is saved when the late
    // answer comes ...
    let saved = tokio::time::timeout(Duration::from_secs(10), async {
        while stored_refresh_token(&store).await.as_deref() != Some("rt-1") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(saved.is_ok(), "the late answer was saved");
    // ... and the access token it bought is handed to the next fetch, with no new request.
    assert_eq!(auth.token().await.unwrap().access_token().secret(), "at-1");
    assert_eq!(idp.refresh_tokens_sent(), ["rt-0"]);
    assert_eq!(idp.reuse_detected(), 0);
}

/// The first refresh rotates rt-0 and loses its answer (`lost`); what the grant does next.
async fn after_a_lost_answer(
    lost: LostAnswer,
    grace: bool,
) -> (StandInIdp, AuthLayer, MemoryStore) {
    let idp = StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    idp.state.grace.store(grace, SeqCst);
    idp.lose_answers(&[lost]);
    let store = seeded("rt-0");
    let auth = AuthLayer::builder(grant(&idp, store.clone()))
        .backoff(Duration::ZERO, Duration::ZERO)
        .build()
        .unwrap();
    let err = auth.token().await.unwrap_err();
    assert!(!err.is_unprocessed(), "{err:?}");
    assert_eq!(
        idp.refresh_tokens_sent(),
        ["rt-0"],
        "an answer lost after sending is not retried within the fetch"
    );
    (idp, auth, store)
}

#[tokio::test]
async fn a_rotation_lost_to_a_500_is_recovered_on_a_server_with_a_grace_period() {
    let (idp, auth, store) = after_a_lost_answer(LostAnswer::RotateThen500, true).await;
    // The next fetch sends rt-0 once more; the server takes it back within its grace period.
    assert_eq!(auth.token().await.unwrap().access_token().secret(), "at-2");
    assert_eq!(idp.refresh_tokens_sent(), ["rt-0", "rt-0"]);
    assert_eq!(idp.state.grace_reuses.load(SeqCst), 1);
    assert_eq!(idp.reuse_detected(), 0);
    assert_eq!(stored_refresh_token(&store).await.as_deref(), Some("rt-2"));
    // And goes on with the new refresh token.
    let token = auth.token().await.unwrap();
    auth.invalidate(&token);
    auth.token().await.unwrap();
    assert_eq!(idp.refresh_tokens_sent(), ["rt-0", "rt-0", "rt-2"]);
}

#[tokio::test]
async fn a_rotation_lost_to_a_cut_connection_ends_the_grant_clearly_on_a_strict_server() {
    let (idp, auth, _store) = after_a_lost_answer(LostAnswer::RotateThenCut, false).await;
    // The next fetch sends rt-0 once more; the server sees a reuse and revokes the grant.
    let err = auth.token().await.unwrap_err();
    assert!(
        matches!(&err, Error::AuthorizationRequired(m) if m.contains("unanswered")),
        "{err}"
    );
    assert!(err.is_terminal());
    assert_eq!(idp.reuse_detected(), 1);
    // Remembered: not sent a third time.
    let again = auth.token().await.unwrap_err();
    assert!(matches!(again, Error::AuthorizationRequired(_)), "{again}");
    assert_eq!(idp.refresh_tokens_sent(), ["rt-0", "rt-0"]);
}

#[tokio::test]
async fn a_restarted_process_resumes_from_the_file_store() {
    let idp = StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    FileStore::new(&path)
        .save(&StoredToken::new().with_refresh_token("rt-0"))
        .await
        .unwrap();

    // First process: refreshes once, rotating rt-0 into rt-1.
    {
        let auth = AuthLayer::new(grant(&idp, FileStore::new(&path)));
        assert_eq!(auth.token().await.unwrap().access_token().secret(), "at-1");
    }
    // Second process: uses the stored access token without asking the server ...
    let auth = AuthLayer::new(grant(&idp, FileStore::new(&path)));
    let token = auth.token().await.unwrap();
    assert_eq!(token.access_token().secret(), "at-1");
    assert_eq!(idp.requests_to("/token").len(), 1);
    // ... and refreshes with the rotated refresh token when that one is rejected.
    auth.invalidate(&token);
    assert_eq!(auth.token().await.unwrap().access_token().secret(), "at-2");
    assert_eq!(idp.refresh_tokens_sent(), ["rt-0", "rt-1"]);
    assert_eq!(idp.reuse_detected(), 0);
}

#[tokio::test]
async fn a_rejected_refresh_token_is_terminal_and_never_sent_again() {
    let idp = StandInIdp::start().await;
    let store = seeded("rt-unknown");
    // No backoff, so that each call below reaches the grant: it must answer from memory.
    let auth = AuthLayer::builder(grant(&idp, store.clone()))
        .backoff(Duration::ZERO, Duration::ZERO)
        .build()
        .unwrap();

    for _ in 0..3 {
        let err = auth.token().await.unwrap_err();
        assert_eq!(err.oauth().map(|e| e.code()), Some("invalid_grant"));
        assert!(err.is_terminal());
    }
    assert_eq!(idp.refresh_tokens_sent(), ["rt-unknown"]);

    // Someone authorizes again and stores a new refresh token: the grant picks it up.
    idp.add_refresh_token("rt-new");
    store
        .save(&StoredToken::new().with_refresh_token("rt-new"))
        .await
        .unwrap();
    assert_eq!(auth.token().await.unwrap().access_token().secret(), "at-1");
}

#[tokio::test]
async fn an_empty_store_asks_for_authorization() {
    let idp = StandInIdp::start().await;
    let auth = AuthLayer::new(grant(&idp, MemoryStore::new()));
    let err = auth.token().await.unwrap_err();
    assert!(matches!(err, Error::AuthorizationRequired(_)), "{err:?}");
    assert!(err.is_terminal());
    assert!(idp.requests_to("/token").is_empty());
}

#[tokio::test]
async fn a_failed_save_is_an_error_and_the_token_is_not_used() {
    let idp = StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    let store = FlakyStore::default();
    store
        .inner
        .save(&StoredToken::new().with_refresh_token("rt-0"))
        .await
        .unwrap();
    store.broken.store(true, SeqCst);
    let auth = AuthLayer::builder(grant(&idp, store.clone()))
        .backoff(Duration::ZERO, Duration::ZERO)
        .build()
        .unwrap();

    let err = auth.token().await.unwrap_err();
    assert!(
        matches!(&err, Error::Store(e) if e.is_refresh_token_unsaved()),
        "{err:?}"
    );
    assert!(
        auth.stats().token_age.is_none(),
        "the bought token was not installed"
    );

    // Once the store works again, the grant saves what it kept in memory, and hands out the
    // access token that refresh bought: no refresh token goes out.
    store.broken.store(false, SeqCst);
    assert_eq!(auth.token().await.unwrap().access_token().secret(), "at-1");
    assert_eq!(stored_refresh_token(&store).await.as_deref(), Some("rt-1"));
    assert_eq!(idp.refresh_tokens_sent(), ["rt-0"]);
    assert_eq!(auth.stats().unsaved_refreshes, 1);
}

/// The issue's case: a store other processes share (it has a lock, so the grant reads it again
/// at every fetch) fails to save after the server rotated the refresh token. The spent refresh
/// token it still holds is never sent again: later fetches send nothing while the save keeps
/// failing (each says so, and is counted), then save the kept state and use its access token,
/// and the next refresh sends the rotated refresh token. A state another process saved
/// meanwhile (a new authorization) wins over the kept one.
#[tokio::test]
async fn a_failed_save_under_a_shared_lock_never_sends_the_spent_refresh_token() {
    let idp = StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    let store = FlakyStore::shared_with("rt-0").await;
    store.broken.store(true, SeqCst);
    let auth = AuthLayer::builder(grant(&idp, store.clone()))
        .backoff(Duration::ZERO, Duration::ZERO)
        .fetch_attempts(1)
        .build()
        .unwrap();
    for _ in 0..3 {
        let err = auth.token().await.unwrap_err();
        assert!(
            matches!(&err, Error::Store(e) if e.is_refresh_token_unsaved()),
            "{err:?}"
        );
        assert!(err.to_string().contains("kept in memory"), "{err}");
    }
    assert_eq!(
        idp.refresh_tokens_sent(),
        ["rt-0"],
        "the spent token went again"
    );
    assert_eq!(auth.stats().unsaved_refreshes, 3);

    store.broken.store(false, SeqCst);
    let token = auth.token().await.unwrap();
    assert_eq!(token.access_token().secret(), "at-1");
    assert_eq!(stored_refresh_token(&store).await.as_deref(), Some("rt-1"));
    assert!(auth.invalidate(&token));
    assert_eq!(auth.token().await.unwrap().access_token().secret(), "at-2");
    assert_eq!(idp.refresh_tokens_sent(), ["rt-0", "rt-1"]);
    assert_eq!(idp.reuse_detected(), 0);

    // Unsaved again; meanwhile another process stores a new authorization: it wins.
    store.broken.store(true, SeqCst);
    assert!(auth.invalidate(&auth.token().await.unwrap()));
    auth.token().await.unwrap_err();
    assert_eq!(idp.refresh_tokens_sent(), ["rt-0", "rt-1", "rt-2"]);
    idp.add_refresh_token("rt-new");
    store
        .inner
        .save(&StoredToken::new().with_refresh_token("rt-new"))
        .await
        .unwrap();
    store.broken.store(false, SeqCst);
    auth.token().await.unwrap();
    assert_eq!(
        idp.refresh_tokens_sent(),
        ["rt-0", "rt-1", "rt-2", "rt-new"]
    );
    assert_eq!(idp.reuse_detected(), 0);
}

/// A refresh whose save failed keeps the store's lock, so that no other process refreshes
/// with the spent refresh token; it does not keep it for as long as the layer stays idle: the
/// save is tried again in the background, and once it succeeds the lock is let go. No request
/// is needed, and no refresh token goes out.
#[tokio::test]
async fn a_failed_save_is_retried_in_the_background_and_the_lock_let_go() {
    let idp = StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    let store = FlakyStore::shared_with("rt-0").await;
    store.broken.store(true, SeqCst);
    let auth = AuthLayer::builder(grant(&idp, store.clone()))
        .fetch_attempts(1)
        .build()
        .unwrap();
    let err = auth.token().await.unwrap_err();
    assert!(
        matches!(&err, Error::Store(e) if e.is_refresh_token_unsaved()),
        "{err:?}"
    );
    assert_eq!(store.held.load(SeqCst), 1, "the lock is kept");
    let fetches = auth.stats().fetches;

    // The layer stays idle; the store works again.
    store.broken.store(false, SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.held.load(SeqCst) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the lock is still held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stored_refresh_token(&store).await.as_deref(), Some("rt-1"));
    assert_eq!(auth.stats().fetches, fetches, "no fetch saved it");
    assert_eq!(auth.token().await.unwrap().access_token().secret(), "at-1");
    assert_eq!(idp.refresh_tokens_sent(), ["rt-0"]);
}

/// A grant of another client (another client id) over `store`, with a revocation endpoint.
fn another_clients_grant(idp: &StandInIdp, store: &MemoryStore) -> RefreshTokenGrant {
    RefreshTokenGrant::builder(idp.url("/token"))
        .client_id("another-app")
        .client_secret("app-secret")
        .revocation_url(idp.url("/revoke"))
        .store(store.clone())
        .build()
        .unwrap()
}

/// A store holding another client's tokens (saved by a grant with another client id, or
/// another token endpoint) is refused: nothing of it is sent, to any server.
#[tokio::test]
async fn a_store_holding_another_clients_tokens_sends_nothing() {
    let idp = StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    let store = seeded("rt-0");
    let auth = AuthLayer::new(grant(&idp, store.clone()));
    auth.token().await.unwrap();
    let saved = store.load().await.unwrap().unwrap();
    assert!(saved.client().is_some(), "the saving client is recorded");

    let err = AuthLayer::new(another_clients_grant(&idp, &store))
        .token()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Store(_)) && err.to_string().contains("another client"),
        "{err}"
    );
    assert_eq!(idp.refresh_tokens_sent(), ["rt-0"]);
}

/// `revoke()` on a grant over a store holding another client's tokens sends none of them to
/// the revocation endpoint, leaves them in the store, and says why.
#[tokio::test]
async fn revoke_over_another_clients_store_sends_and_clears_nothing_of_it() {
    let idp = StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    let store = seeded("rt-0");
    let auth = revocable(&idp, &store).await;
    let saved = store.load().await.unwrap();

    let err = AuthLayer::new(another_clients_grant(&idp, &store))
        .revoke()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("another client"), "{err}");
    assert!(idp.requests_to("/revoke").is_empty(), "nothing revoked");
    assert_eq!(store.load().await.unwrap(), saved, "the store is kept");
    // The owner still holds its grant.
    let token = auth.token().await.unwrap();
    assert!(auth.invalidate(&token));
    assert_ne!(
        auth.token().await.unwrap().access_token(),
        token.access_token()
    );
}

/// A layer over a grant with a revocation endpoint and `store`, that has fetched a token.
async fn revocable(idp: &StandInIdp, store: &MemoryStore) -> AuthLayer {
    let source = RefreshTokenGrant::builder(idp.url("/token"))
        .client_id("app")
        .client_secret("app-secret")
        .revocation_url(idp.url("/revoke"))
        .store(store.clone())
        .build()
        .unwrap();
    let auth = AuthLayer::new(source);
    auth.token().await.unwrap();
    auth
}

#[tokio::test]
async fn revoke_revokes_the_refresh_token_and_clears_the_store() {
    let idp = StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    let store = seeded("rt-0");
    let auth = revocable(&idp, &store).await;

    auth.revoke().await.unwrap();
    let revoked: Vec<_> = idp
        .requests_to("/revoke")
        .iter()
        .map(|r| r.form())
        .collect();
    assert_eq!(revoked.len(), 2);
    assert!(revoked[0].contains(&("token".into(), "rt-1".into())));
    assert!(revoked[0].contains(&("token_type_hint".into(), "refresh_token".into())));
    assert!(revoked[1].contains(&("token".into(), "at-1".into())));
    assert!(revoked[1].contains(&("token_type_hint".into(), "access_token".into())));
    assert_eq!(store.load().await.unwrap(), None);
    assert!(matches!(
        auth.token().await.unwrap_err(),
        Error::AuthorizationRequired(_)
    ));
}

#[tokio::test]
async fn revoke_forgets_everything_even_when_the_revocation_endpoint_fails() {
    let idp = StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    idp.state.revocation_down.store(true, SeqCst);
    let store = seeded("rt-0");
    let auth = revocable(&idp, &store).await;

    let err = auth.revoke().await.unwrap_err();
    assert!(err.is_unprocessed(), "the endpoint's 503: {err:?}");
    assert_eq!(
        idp.requests_to("/revoke").len(),
        2,
        "both tokens were tried"
    );
    assert_eq!(
        store.load().await.unwrap(),
        None,
        "the store is cleared anyway"
    );
    assert!(
        auth.stats().token_age.is_none(),
        "the access token is forgotten"
    );
    assert!(matches!(
        auth.token().await.unwrap_err(),
        Error::AuthorizationRequired(_)
    ));
    assert_eq!(
        idp.refresh_tokens_sent(),
        ["rt-0"],
        "the refresh token is forgotten too"
    );
}

/// `ClientAuth::Query` puts the client credentials and the grant's plain parameters in the URL,
/// never the refresh token: URLs end up in access logs.
#[tokio::test]
async fn query_client_auth_keeps_the_refresh_token_out_of_the_url() {
    let idp = StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    let grant = RefreshTokenGrant::builder(idp.url("/token"))
        .client_id("app")
        .client_secret("app-secret")
        .auth(ClientAuth::Query)
        .store(seeded("rt-0"))
        .build()
        .unwrap();
    let _ = AuthLayer::new(grant).token().await;

    let [req] = idp.requests_to("/token").try_into().unwrap();
    let query = req.query_pairs();
    assert!(query.contains(&("client_id".into(), "app".into())));
    assert!(query.contains(&("grant_type".into(), "refresh_token".into())));
    assert!(
        query
            .iter()
            .all(|(k, v)| k != "refresh_token" && v != "rt-0"),
        "{query:?}"
    );
    assert!(
        req.form()
            .contains(&("refresh_token".into(), "rt-0".into()))
    );
}

/// One grant shared by two layers (clones of one `RefreshTokenGrant`, as two clients of one
/// user would): each layer has its own single flight, and the grant's own lock serializes their
/// refreshes, so under 1,000 callers per layer no refresh token is ever sent twice.
#[tokio::test]
async fn a_grant_shared_by_two_layers_never_sends_a_refresh_token_twice() {
    let idp = StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    let shared = grant(&idp, seeded("rt-0"));
    let first = AuthLayer::new(shared.clone());
    let second = AuthLayer::new(shared);

    for _round in 0..3 {
        let mut set = JoinSet::new();
        for i in 0..2_000 {
            let auth = if i % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            set.spawn(async move { auth.token().await.unwrap() });
        }
        let tokens = set.join_all().await;
        // As if the API had rejected what each layer holds: both must fetch again.
        for auth in [&first, &second] {
            let current = auth.token().await.unwrap();
            auth.invalidate(&current);
        }
        assert!(
            tokens
                .iter()
                .all(|t| t.access_token().secret().starts_with("at-"))
        );
    }
    let sent = idp.refresh_tokens_sent();
    let mut unique = sent.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        sent.len(),
        "a refresh token sent twice: {sent:?}"
    );
    assert!(sent.len() >= 3, "{sent:?}");
    assert_eq!(idp.reuse_detected(), 0);
}

#[tokio::test]
async fn invalid_client_and_unauthorized_client_are_remembered_like_invalid_grant() {
    for (code, body) in [
        ("invalid_client", r#"{"error":"invalid_client"}"#),
        ("unauthorized_client", r#"{"error":"unauthorized_client"}"#),
    ] {
        let endpoint = StandInEndpoint::json(StatusCode::BAD_REQUEST, body).await;
        let source = RefreshTokenGrant::builder(endpoint.url("/token"))
            .client_id("app")
            .client_secret("app-secret")
            .auth(ClientAuth::Post)
            .store(seeded("rt-0"))
            .build()
            .unwrap();
        // No backoff, so that each call below reaches the grant: it must answer from memory.
        let auth = AuthLayer::builder(source)
            .backoff(Duration::ZERO, Duration::ZERO)
            .build()
            .unwrap();

        for _ in 0..3 {
            let err = auth.token().await.unwrap_err();
            assert_eq!(err.oauth().map(|e| e.code()), Some(code), "{err:?}");
            assert!(err.is_terminal(), "{code}");
        }
        assert_eq!(endpoint.recorded().len(), 1, "{code}: one refresh request");
        assert_eq!(
            auth.stats().fetches,
            3,
            "{code}: each call reached the grant"
        );
    }
}

/// The stored access token is used "while it lasts, then refreshes": one that has already
/// expired is not handed out; the first fetch sends the stored refresh token and returns the
/// access token it buys.
#[tokio::test]
async fn an_expired_stored_access_token_is_not_used_the_first_fetch_refreshes() {
    let idp = StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    let expired = std::time::SystemTime::now() - Duration::from_secs(60);
    let store = MemoryStore::with(
        StoredToken::new()
            .with_refresh_token("rt-0")
            .with_access_token("at-expired", Some(expired)),
    );
    let auth = AuthLayer::new(grant(&idp, store.clone()));

    let token = auth.token().await.unwrap();
    assert_eq!(token.access_token().secret(), "at-1");
    assert_eq!(idp.refresh_tokens_sent(), ["rt-0"]);
    let saved = store.load().await.unwrap().unwrap();
    assert_eq!(saved.access_token().unwrap().secret(), "at-1");
}

/// Set in the child processes of `processes_sharing_one_file_store_send_each_refresh_token_once`:
/// the token endpoint's URL and the store's path, separated by `|`.
const FILE_STORE_WORKER: &str = "TOWER_BEARER_FILE_STORE_WORKER";
/// Processes sharing the file, and the fresh tokens each asks for.
const FILE_STORE_PROCESSES: usize = 4;
const FILE_STORE_ROUNDS: usize = 8;

/// One process of the test below: asks for a token, rejects it, asks again, over one
/// `FileStore` that the other processes share.
async fn file_store_worker(spec: &str) {
    let (url, path) = spec.split_once('|').expect("url|path");
    let grant = RefreshTokenGrant::builder(url)
        .client_id("app")
        .client_secret("app-secret")
        .auth(ClientAuth::Post)
        .store(FileStore::new(path))
        .build()
        .unwrap();
    ask_and_reject(&AuthLayer::new(grant), FILE_STORE_ROUNDS).await;
}

/// Several OS processes refresh through one `FileStore` against a server that revokes the
/// grant when a spent refresh token comes back (each answer 30 ms late, so that refreshes
/// overlap): the store's lock makes each process refresh in turn with the refresh token the
/// last one saved, or take the access token it bought. No refresh token is sent twice, and
/// every process gets all its tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_one_file_store_send_each_refresh_token_once() {
    if let Ok(spec) = std::env::var(FILE_STORE_WORKER) {
        return file_store_worker(&spec).await;
    }
    let idp = StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    idp.lose_answers(
        &[LostAnswer::Late(Duration::from_millis(30)); FILE_STORE_PROCESSES * FILE_STORE_ROUNDS],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    FileStore::new(&path)
        .save(&StoredToken::new().with_refresh_token("rt-0"))
        .await
        .unwrap();

    let spec = format!("{}|{}", idp.url("/token"), path.display());
    run_workers(
        "processes_sharing_one_file_store_send_each_refresh_token_once",
        FILE_STORE_PROCESSES,
        FILE_STORE_WORKER,
        &spec,
    )
    .await;
    assert_eq!(idp.reuse_detected(), 0, "a refresh token was sent twice");
    let sent = idp.refresh_tokens_sent();
    // Each process's first token may be one another process bought; every other token is a
    // refresh of its own or one bought by another process after it.
    each_sent_once(&sent, FILE_STORE_ROUNDS);
    let saved = FileStore::new(&path).load().await.unwrap().unwrap();
    assert_eq!(
        saved.refresh_token().unwrap().secret(),
        format!("rt-{}", sent.len()),
        "the store holds the refresh token issued last"
    );
}
