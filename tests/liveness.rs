//! No caller hangs and nothing deadlocks, whatever the runtimes do: a runtime that has shut
//! down, a runtime kept but never driven again, a runtime without timers, fetches on a runtime
//! of the user's choice, callers outside any runtime. Every wait here has a deadline of its own,
//! so a regression fails the test instead of hanging it.

mod support;

use std::{
    future::Future,
    pin::pin,
    sync::{Arc, Mutex, mpsc},
    task::{Context, Poll, Wake, Waker},
    thread,
    time::Duration,
};

use http::{Request, StatusCode};
use http_body_util::Empty;
use support::{CountingSource, paused_runtime};
use tokio::time::{Instant, advance};
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::{AuthLayer, Error, Token, source::from_fn};

/// Runs `f` on a thread of its own and waits at most 10 s for its result: a deadlock fails the
/// test instead of hanging it.
fn within_ten_seconds<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("finished within 10 s: no deadlock, no hang")
}

/// Polls `fut` to completion on this thread, outside any Tokio runtime.
fn block_on_without_runtime<F: Future>(fut: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park_timeout(Duration::from_millis(100));
    }
}

#[test]
fn a_runtime_that_has_shut_down_gives_an_error_not_a_deadlock() {
    // The fetch is spawned onto a runtime that has shut down, which drops the task inside
    // `spawn`; the task's guard then resolves the fetch, which must not find a lock held.
    let (result, fetches) = within_ten_seconds(|| {
        let closed = tokio::runtime::Runtime::new().unwrap();
        let handle = closed.handle().clone();
        drop(closed);
        let source = CountingSource::new(Duration::ZERO, Some(Duration::from_secs(60)));
        let auth = AuthLayer::new(source.clone());
        (handle.block_on(auth.token()), source.fetches())
    });
    assert!(matches!(result, Err(Error::Aborted)), "{result:?}");
    assert_eq!(fetches, 0);

    // The same through the builder's `runtime`, called from a live runtime.
    let (first, second) = within_ten_seconds(|| {
        let closed = tokio::runtime::Runtime::new().unwrap();
        let handle = closed.handle().clone();
        drop(closed);
        let source = CountingSource::new(Duration::ZERO, Some(Duration::from_secs(60)));
        let auth = AuthLayer::builder(source).runtime(handle).build().unwrap();
        paused_runtime().block_on(async {
            let first = auth.token().await;
            // Failures back off as any other: the next caller fails fast, and hangs no more.
            let second = auth.token().await;
            (first, second)
        })
    });
    assert!(matches!(first, Err(Error::Aborted)), "{first:?}");
    assert!(matches!(second, Err(Error::Aborted)), "{second:?}");
}

#[test]
fn waiters_give_up_on_a_fetch_whose_runtime_is_never_driven_again() {
    let source = CountingSource::new(Duration::ZERO, Some(Duration::from_secs(60)));
    let auth = AuthLayer::builder(source.clone())
        .fetch_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // A helper runtime starts the fetch (a synchronous wrapper's `block_on` whose caller gave
    // up), then is kept but never driven again: the fetch task never runs.
    let helper = paused_runtime();
    helper.block_on(async {
        let mut first = tokio_test::task::spawn(auth.token());
        assert!(first.poll().is_pending());
    });
    let outcome = within_ten_seconds(move || {
        paused_runtime().block_on(async move {
            let started = Instant::now();
            let err = auth.token().await.unwrap_err();
            let waited = started.elapsed();
            // The stranded fetch was given up: after the backoff, the next caller fetches on
            // this runtime.
            advance(Duration::from_millis(200)).await;
            let token = auth.token().await.unwrap();
            (err, waited, token, auth.stats())
        })
    });
    let (err, waited, token, stats) = outcome;
    assert!(
        matches!(err, Error::Timeout(d) if d == Duration::from_secs(6)),
        "{err:?}"
    );
    // Its own deadline: the fetch timeout and one second, counted from when the fetch
    // started (on the helper's clock, a moment earlier).
    assert!(
        waited <= Duration::from_secs(6) && waited > Duration::from_millis(5_900),
        "{waited:?}"
    );
    assert_eq!(token.access_token().secret(), "tok-1");
    assert_eq!(source.fetches(), 1, "the stranded fetch never ran");
    assert_eq!((stats.fetches, stats.fetch_failures), (2, 1));
    drop(helper);
}

#[test]
fn a_background_refresh_stranded_on_an_idle_runtime_is_replaced_after_its_deadline() {
    // 100-second tokens, refreshed in the background from 70 s on (refresh-ahead off).
    let source = CountingSource::new(Duration::ZERO, Some(Duration::from_secs(100)));
    let api = source.api();
    let auth = AuthLayer::builder(source.clone())
        .refresh_ahead(false)
        .fetch_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(auth.clone())
        .service(api.clone());
    let get = || {
        Request::get("https://api.test/")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let main = paused_runtime();
    main.block_on(svc.clone().oneshot(get())).unwrap();
    // A request from a helper runtime, in the refresh window, starts the refresh there; the
    // helper is then never driven again.
    let helper = paused_runtime();
    helper.block_on(async {
        advance(Duration::from_secs(71)).await;
        let response = svc.clone().oneshot(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    });
    assert_eq!(auth.stats().background_refreshes, 1);
    let seen = within_ten_seconds(move || {
        main.block_on(async move {
            advance(Duration::from_secs(71)).await;
            // Requests go on with the current token, and once the stranded refresh is past its
            // deadline (6 s), one of them starts another, here.
            for _ in 0..100 {
                let response = svc.clone().oneshot(get()).await.unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                advance(Duration::from_millis(100)).await;
            }
            api.seen()
        })
    });
    assert_eq!(seen.last().unwrap(), "tok-2");
    assert_eq!(source.fetches(), 2);
    let stats = auth.stats();
    assert_eq!(stats.waiters, 1, "only the cold start waited");
    assert_eq!(stats.background_refreshes, 2);
    drop(helper);
}

#[test]
fn fetches_run_on_the_runtime_given_to_the_builder() {
    let background = one_worker_runtime();
    let ran_on = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&ran_on);
    let source = from_fn(move || {
        let record = Arc::clone(&record);
        async move {
            record
                .lock()
                .unwrap()
                .push(tokio::runtime::Handle::current().id());
            Ok(Token::new("t").with_expires_in(Duration::from_secs(60)))
        }
    });
    let auth = AuthLayer::builder(source)
        .runtime(background.handle().clone())
        .build()
        .unwrap();
    let caller = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = within_ten_seconds({
        let auth = auth.clone();
        move || caller.block_on(auth.token())
    });
    assert_eq!(token.unwrap().access_token().secret(), "t");
    // A caller outside any runtime (a plain thread) can wait on it too.
    assert!(auth.invalidate(&Token::new("t")));
    let token = within_ten_seconds({
        let auth = auth.clone();
        move || block_on_without_runtime(auth.token())
    });
    assert_eq!(token.unwrap().access_token().secret(), "t");
    let background_id = background.handle().id();
    assert_eq!(*ran_on.lock().unwrap(), [background_id, background_id]);
}

#[test]
fn a_runtime_without_timers_is_a_clear_error_at_the_first_request() {
    let source = CountingSource::new(Duration::ZERO, Some(Duration::from_secs(60)));
    let auth = AuthLayer::new(source.clone());
    let no_timers = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let result = within_ten_seconds(move || no_timers.block_on(auth.token()));
    let err = result.unwrap_err();
    assert!(matches!(err, Error::NoTimer), "{err:?}");
    assert!(err.to_string().contains("enable_time"), "{err}");
    assert!(err.is_terminal());
    assert_eq!(source.fetches(), 0, "nothing was fetched on it");
}

#[test]
fn without_a_runtime_the_caller_gets_an_error_not_a_panic() {
    let source = CountingSource::new(Duration::ZERO, None);
    let auth = AuthLayer::new(source.clone());
    let result = within_ten_seconds(move || block_on_without_runtime(auth.token()));
    assert!(matches!(result, Err(Error::NoRuntime)), "{result:?}");
    assert_eq!(source.fetches(), 0);
}

/// A runtime that drives itself, on one worker thread.
fn one_worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// A runtime whose only driver is elsewhere: built, entered by a thread that polls its own
/// future, and never driven.
fn idle_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A caller's wake-up is relayed by a task on its runtime; a runtime that never runs that task
/// must not keep its callers waiting once the fetch is done.
#[test]
fn callers_on_a_runtime_that_never_runs_its_tasks_are_woken_by_the_fetch_itself() {
    let fetcher = one_worker_runtime();
    let source = CountingSource::new(Duration::from_millis(20), Some(Duration::from_secs(60)));
    let auth = AuthLayer::builder(source.clone())
        .runtime(fetcher.handle().clone())
        .build()
        .unwrap();
    let idle = idle_runtime();
    let caller = auth.clone();
    let token = within_ten_seconds(move || {
        // The caller waits from inside `idle`, which is never driven: its relay never runs.
        // Polled again only when woken, so that only a wake-up can end the wait.
        let _entered = idle.enter();
        let (woken, wake_ups) = mpsc::channel();
        struct ByChannel(Mutex<mpsc::Sender<()>>);
        impl Wake for ByChannel {
            fn wake(self: Arc<Self>) {
                let _ = self.0.lock().unwrap().send(());
            }
        }
        let waker = Waker::from(Arc::new(ByChannel(Mutex::new(woken))));
        let mut cx = Context::from_waker(&waker);
        let mut token = pin!(caller.token());
        loop {
            if let Poll::Ready(token) = token.as_mut().poll(&mut cx) {
                return token;
            }
            wake_ups.recv().unwrap();
        }
    });
    assert_eq!(token.unwrap().access_token().secret(), "tok-1");
    assert_eq!((source.fetches(), auth.stats().waiters), (1, 1));
}

/// The relay of a caller's wake-up goes with its runtime; a caller polled elsewhere gets
/// [`Error::Aborted`] then, not a wait that nothing will end.
#[test]
fn a_caller_whose_runtime_shuts_down_while_it_waits_gets_an_error_not_a_hang() {
    let fetcher = one_worker_runtime();
    // A fetch that takes a minute: nothing but the runtime's shutdown ends the wait early.
    let source = CountingSource::new(Duration::from_secs(60), Some(Duration::from_secs(60)));
    let auth = AuthLayer::builder(source.clone())
        .runtime(fetcher.handle().clone())
        .fetch_timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let watched = one_worker_runtime();
    let handle = watched.handle().clone();
    let caller = auth.clone();
    let waiting = thread::spawn(move || {
        let _entered = handle.enter();
        block_on_without_runtime(caller.token())
    });
    let result = within_ten_seconds(move || {
        while auth.stats().waiters == 0 {
            thread::yield_now();
        }
        drop(watched);
        waiting.join().unwrap()
    });
    assert!(matches!(result, Err(Error::Aborted)), "{result:?}");
    assert_eq!(source.fetches(), 1);
}
