use std::{
    convert::Infallible,
    future::{Future, Ready, ready},
    pin::pin,
    sync::mpsc,
    task::{Context, Poll, Waker},
    time::Duration,
};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::{AuthLayer, StaticToken};

/// Answers every request 200.
const ANSWER: AnswerWith = AnswerWith(http::StatusCode::OK, None);

/// A rejected token is kept only by a cache that shares tokens with a fleet (which must
/// not take it back from Redis); any other cache keeps no copy of that secret.
#[tokio::test]
async fn a_cache_without_a_fleet_keeps_no_copy_of_a_rejected_token() {
    let auth = AuthLayer::new(StaticToken::new("t"));
    let token = auth.token().await.unwrap();
    assert!(auth.invalidate(&token));
    assert!(auth.cache().current().load_full().is_none());
    auth.token().await.unwrap();
    let current = auth.cache().current().load_full().unwrap();
    auth.cache().reject(current.generation);
    assert!(auth.cache().lock_state().rejected.is_none());
}

/// A token's entry is replaced once, when the first response accepts it: the same token and
/// generation, now with its quiet period.
#[tokio::test]
async fn the_first_accepting_answer_makes_the_token_quiet() {
    let auth = AuthLayer::new(StaticToken::new("t"));
    auth.token().await.unwrap();
    let fresh = auth.cache().peek().unwrap();
    assert!(!fresh.accepted);
    assert_eq!(fresh.quiet_until, fresh.fetched_at);
    let mut svc = auth.layer(ANSWER);
    let request = || Request::get("https://api.example.com/").body(()).unwrap();
    svc.call(request()).await.unwrap();
    let accepted = auth.cache().peek().unwrap();
    assert!(accepted.accepted);
    assert_eq!(accepted.generation, fresh.generation);
    assert_eq!(accepted.quiet_until, accepted.refresh_at);
    // Replaced once: later answers change nothing.
    svc.call(request()).await.unwrap();
    assert!(std::sync::Arc::ptr_eq(
        &accepted,
        &auth.cache().peek().unwrap()
    ));
    assert_eq!(auth.stats().fetches, 1);
}

/// Answers with this status and, if any, this `grpc-status`.
#[derive(Clone, Copy)]
struct AnswerWith(http::StatusCode, Option<&'static str>);

impl Service<Request<()>> for AnswerWith {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<()>) -> Self::Future {
        let mut response = Response::builder().status(self.0);
        if let Some(status) = self.1 {
            response = response.header("grpc-status", status);
        }
        ready(Ok(response.body(()).unwrap()))
    }
}

/// Only a success shows that the API took the token: a redirect, a 403, a 404, a 429 or
/// 503 (which a gateway may send before it looks at the token) or a gRPC error leaves it
/// unaccepted, so that its rejection would count toward a storm, not as a revocation.
#[tokio::test]
async fn only_a_success_accepts_a_token() {
    use http::StatusCode;
    let auth = AuthLayer::new(StaticToken::new("t"));
    auth.token().await.unwrap();
    let request = || Request::get("https://api.example.com/").body(()).unwrap();
    for answer in [
        AnswerWith(StatusCode::FOUND, None),
        AnswerWith(StatusCode::FORBIDDEN, None),
        AnswerWith(StatusCode::NOT_FOUND, None),
        AnswerWith(StatusCode::TOO_MANY_REQUESTS, None),
        AnswerWith(StatusCode::SERVICE_UNAVAILABLE, None),
        AnswerWith(StatusCode::OK, Some("14")),
    ] {
        auth.layer(answer).call(request()).await.unwrap();
        assert!(!auth.cache().peek().unwrap().accepted, "{}", answer.0);
    }
    auth.layer(AnswerWith(StatusCode::OK, Some("0")))
        .call(request())
        .await
        .unwrap();
    assert!(auth.cache().peek().unwrap().accepted);
}

/// A request that read a token just as its background refresh finished does not start
/// another: the refresh window it saw belongs to a token that is no longer current.
#[tokio::test(start_paused = true)]
async fn a_request_that_read_the_replaced_token_starts_no_second_refresh() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    };
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&fetches);
    let source = crate::source::from_fn(move || {
        let n = counted.fetch_add(1, SeqCst) + 1;
        async move { Ok(crate::Token::new(format!("t{n}")).with_expires_in(Duration::from_secs(100))) }
    });
    let auth = AuthLayer::builder(source).jitter_seed(1).build().unwrap();
    auth.token().await.unwrap();
    let old = auth.cache().peek().unwrap();
    // Into the refresh window: a request starts the background refresh, which finishes.
    tokio::time::advance(old.refresh_at.duration_since(old.fetched_at)).await;
    let now = tokio::time::Instant::now();
    assert!(auth.cache().check(&old, now));
    while auth.cache().peek().unwrap().generation == old.generation {
        tokio::task::yield_now().await;
    }
    assert_eq!(fetches.load(SeqCst), 2);
    // Another request read the old token before the new one was installed.
    assert!(auth.cache().check(&old, now));
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(fetches.load(SeqCst), 2, "a second refresh started");
    assert_eq!(auth.stats().background_refreshes, 1);
}

/// The valid-token path takes no lock: requests complete while another thread holds the
/// cache's state lock (which every change of the current token takes). If a request took
/// it, the request thread would block and the test would fail at its deadline.
#[tokio::test]
async fn the_valid_token_path_completes_while_the_state_lock_is_held() {
    let auth = AuthLayer::new(StaticToken::new("t"));
    let mut svc = auth.layer(ANSWER);
    // A first request, whose answer accepts the token: from then on it is quiet.
    let request = Request::get("https://api.example.com/").body(()).unwrap();
    svc.call(request).await.unwrap();
    assert!(auth.cache().peek().unwrap().accepted);
    let cache = std::sync::Arc::clone(auth.cache());

    let (locked, release) = (mpsc::channel(), mpsc::channel::<()>());
    let holder = std::thread::spawn(move || {
        let _guard = cache.lock_state();
        locked.0.send(()).unwrap();
        let _ = release.1.recv();
    });
    locked.1.recv().unwrap();

    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..100 {
            let request = Request::get("https://api.example.com/").body(()).unwrap();
            let mut fut = pin!(svc.call(request));
            assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(_))));
        }
        done.send(()).unwrap();
    });
    let outcome = finished.recv_timeout(Duration::from_secs(30));
    release.0.send(()).unwrap();
    holder.join().unwrap();
    outcome.expect("requests blocked on the state lock");
}
