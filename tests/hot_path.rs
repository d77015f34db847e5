//! The valid-token path allocates nothing beyond what inserting a header into the request's own
//! header map costs: counted with a counting global allocator, against the same request with a
//! fixed header inserted by hand.

#[path = "support/noop.rs"]
mod noop;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    future::Future,
    pin::pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
};

use http::{HeaderValue, Request, header::AUTHORIZATION};
use noop::Noop;
use tower::{Layer, Service};
use tower_bearer::{AuthLayer, AuthService, StaticToken};

struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Allocations made on this thread while `f` runs.
fn allocations<T>(f: impl FnOnce() -> T) -> (usize, T) {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    (ALLOCATIONS.with(Cell::get), out)
}

fn run_once<S, B>(svc: &mut S, request: Request<B>)
where
    S: Service<Request<B>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut fut = pin!(svc.call(request));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(result) => {
            result.unwrap();
        }
        Poll::Pending => panic!("the valid-token path must not wait"),
    }
}

/// Allocations of one request with a fixed header inserted by hand: the floor.
fn floor<B>(request: impl Fn() -> Request<B>) -> usize {
    let header = HeaderValue::from_static("Bearer fixed-token-of-similar-length");
    let mut noop = Noop;
    let req = request();
    allocations(move || {
        let mut req = req;
        req.headers_mut().insert(AUTHORIZATION, header.clone());
        run_once(&mut noop, req);
    })
    .0
}

/// A service past its first requests.
async fn warm_service<B: 'static>(
    retry: bool,
    request: impl Fn() -> Request<B>,
) -> AuthService<Noop> {
    let source = StaticToken::new("cached-token-of-similar-length");
    warm(source, retry, request).await
}

/// A service of a layer around `source` past its first requests, its token cached.
async fn warm<B: 'static>(
    source: impl tower_bearer::TokenSource,
    retry: bool,
    request: impl Fn() -> Request<B>,
) -> AuthService<Noop> {
    let auth = AuthLayer::builder(source)
        .retry_unauthorized(retry)
        .build()
        .unwrap();
    auth.token().await.unwrap();
    let mut svc = auth.layer(Noop);
    for _ in 0..WARM_UP {
        run_once(&mut svc, request());
    }
    svc
}

/// Requests sent before counting: past them a service has made its own copies (the layer does
/// it after 8), so nothing done once per service is counted.
const WARM_UP: usize = 20;

async fn layered<B: 'static>(retry: bool, request: impl Fn() -> Request<B>) -> usize {
    let mut svc = warm_service(retry, &request).await;
    let req = request();
    allocations(move || run_once(&mut svc, req)).0
}

#[tokio::test(flavor = "current_thread")]
async fn a_cached_token_costs_no_allocation_beyond_the_header_insert() {
    let bare = || Request::get("https://api.test/").body("").unwrap();
    let floor = floor(bare);
    assert!(
        floor > 0,
        "the first insert into an empty header map allocates, and is counted"
    );
    assert_eq!(layered(false, bare).await, floor, "retry off");
    assert_eq!(
        layered(true, bare).await,
        floor,
        "retry on, a request with no headers"
    );
}

/// Answers every request 503 (as a gateway may, before it looks at the token): no answer
/// accepts the token.
#[derive(Clone)]
struct Unavailable;

impl<B> Service<Request<B>> for Unavailable {
    type Response = http::Response<()>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<http::Response<()>, std::convert::Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        let mut response = http::Response::new(());
        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        std::future::ready(Ok(response))
    }
}

/// A token no response has accepted yet is sent from the hot path too: its requests wait for
/// nothing and allocate nothing more than those of an accepted token (each asks its answer to
/// say whether it accepts the token, a mark on the response future).
#[tokio::test(flavor = "current_thread")]
async fn a_token_no_response_accepted_yet_costs_no_allocation_either() {
    let bare = || Request::get("https://api.test/").body("").unwrap();
    let floor = floor(bare);
    for retry in [false, true] {
        let auth = AuthLayer::builder(StaticToken::new("cached-token-of-similar-length"))
            .retry_unauthorized(retry)
            .build()
            .unwrap();
        auth.token().await.unwrap();
        let waiters = auth.stats().waiters;
        let mut svc = auth.layer(Unavailable);
        for _ in 0..WARM_UP {
            run_once(&mut svc, bare());
        }
        let requests: Vec<_> = (0..100).map(|_| bare()).collect();
        let (counted, ()) = allocations(|| {
            for request in requests {
                run_once(&mut svc, request);
            }
        });
        assert_eq!(counted, 100 * floor, "retry {retry}");
        assert_eq!(auth.stats().fetches, 1);
        assert_eq!(auth.stats().waiters, waiters, "no request waited");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_service_cloned_per_request_allocates_nothing_beyond_the_header_insert() {
    let bare = || Request::get("https://api.test/").body("").unwrap();
    let floor = floor(bare);
    for retry in [false, true] {
        let auth = AuthLayer::builder(StaticToken::new("cached-token-of-similar-length"))
            .retry_unauthorized(retry)
            .build()
            .unwrap();
        auth.token().await.unwrap();
        let svc = auth.layer(Noop);
        // The service cloned from makes, once, the handle its clones share and, with retry
        // on, the spare a resend goes through.
        let (first, ()) = allocations(|| drop(svc.clone()));
        assert_eq!(first, 1 + usize::from(retry), "the first clone");
        // A first request, whose answer accepts the token (which replaces the cache's entry
        // for it, once per token).
        run_once(&mut svc.clone(), bare());
        let requests: Vec<_> = (0..1_000).map(|_| bare()).collect();
        let (counted, ()) = allocations(|| {
            for request in requests {
                run_once(&mut svc.clone(), request);
            }
        });
        assert_eq!(counted, 1_000 * floor, "retry {retry}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_long_lived_service_allocates_once_for_its_own_copies_then_never() {
    let bare = || Request::get("https://api.test/").body("").unwrap();
    let floor = floor(bare);
    let auth = AuthLayer::builder(StaticToken::new("cached-token-of-similar-length"))
        .retry_unauthorized(false)
        .build()
        .unwrap();
    auth.token().await.unwrap();
    let mut svc = auth.layer(Noop);
    // A first request, whose answer accepts the token (before that, requests take the slow
    // path, which allocates).
    run_once(&mut svc, bare());
    let requests: Vec<_> = (0..1_000).map(|_| bare()).collect();
    let (counted, ()) = allocations(|| {
        for request in requests {
            run_once(&mut svc, request);
        }
    });
    // What it keeps of its own: the box holding it and its handle on the layer. (The copies
    // of the header it sends are made with each token.)
    assert_eq!(counted, 1_000 * floor + 2);
}

/// The bytes of the `Authorization` header each request carried, by address: which copy of the
/// header it was.
#[derive(Clone, Default)]
struct HeaderCopies(Arc<Mutex<Vec<usize>>>);

impl<B> Service<Request<B>> for HeaderCopies {
    type Response = http::Response<()>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<http::Response<()>, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let value = &req.headers()[AUTHORIZATION];
        assert_eq!(value, "Bearer tok");
        self.0
            .lock()
            .unwrap()
            .push(value.as_bytes().as_ptr() as usize);
        std::future::ready(Ok(http::Response::new(())))
    }
}

impl HeaderCopies {
    fn last(&self) -> usize {
        *self.0.lock().unwrap().last().unwrap()
    }
}

/// Where each request's header bytes live says who shares them: a service sends the cache's
/// header at first and a copy of its own once it is busy; the clones of a service send a copy
/// that they alone share. No copy is shared by services that were not cloned from one another
/// (for the first few: each token has eight copies, taken in turn), so services kept on
/// different cores count references on different cache lines.
#[tokio::test(flavor = "current_thread")]
async fn busy_services_send_their_own_copy_and_clones_one_their_service_made_for_them() {
    let auth = AuthLayer::new(StaticToken::new("tok"));
    auth.token().await.unwrap();
    let seen = HeaderCopies::default();
    let mut first = auth.layer(seen.clone());
    let request = || Request::get("https://api.test/").body("").unwrap();
    run_once(&mut first, request());
    let shared = seen.last();
    for _ in 0..WARM_UP {
        run_once(&mut first, request());
    }
    let own = seen.last();
    assert_ne!(own, shared, "a busy service sends its own copy");

    // Clones made for one request each send the copy their service made for its clones.
    run_once(&mut first.clone(), request());
    let for_clones = seen.last();
    assert_ne!(for_clones, own);
    assert_ne!(for_clones, shared);
    run_once(&mut first.clone(), request());
    assert_eq!(
        seen.last(),
        for_clones,
        "one copy for all of a service's clones"
    );

    // A clone kept for many requests makes its own copy too, and its clones share another.
    let mut kept = first.clone();
    for _ in 0..WARM_UP {
        run_once(&mut kept, request());
    }
    let kept_own = seen.last();
    assert!(![shared, own, for_clones].contains(&kept_own));
    run_once(&mut kept.clone(), request());
    let kept_for_clones = seen.last();
    assert!(![shared, own, for_clones, kept_own].contains(&kept_for_clones));
    run_once(&mut first, request());
    assert_eq!(seen.last(), own, "and each keeps its own");

    // A new token: from its first request (whose answer accepts it), each service sends its
    // copy of the new token's header.
    assert!(auth.invalidate(&tower_bearer::Token::new("tok")));
    auth.token().await.unwrap();
    run_once(&mut first, request());
    let renewed = seen.last();
    assert!(![shared, own].contains(&renewed));
    run_once(&mut first, request());
    assert_eq!(seen.last(), renewed);
    run_once(&mut first.clone(), request());
    let renewed_for_clones = seen.last();
    assert!(![for_clones, renewed].contains(&renewed_for_clones));
    run_once(&mut first.clone(), request());
    assert_eq!(seen.last(), renewed_for_clones);
}

#[tokio::test(flavor = "current_thread")]
async fn with_retry_off_headers_cost_nothing_extra() {
    let with_headers = || {
        Request::get("https://api.test/")
            .header("accept", "application/json")
            .body("")
            .unwrap()
    };
    assert_eq!(layered(false, with_headers).await, floor(with_headers));
}

#[tokio::test(flavor = "current_thread")]
async fn with_retry_on_the_replay_copy_of_headers_is_the_only_extra_cost() {
    // The copy kept for a resend after a 401 clones the header map: the counter sees it, and
    // `retry_unauthorized(false)` is how to avoid it (see `AuthLayerBuilder::retry_unauthorized`).
    let with_headers = || {
        Request::get("https://api.test/")
            .header("accept", "application/json")
            .body("")
            .unwrap()
    };
    assert!(layered(true, with_headers).await > floor(with_headers));
}

/// What the crate's replay table promises (see `tower_bearer::replay`): bodies of shared bytes
/// cost no allocation to keep for a resend; a `String` costs one copy, within the replay limit,
/// and none past it (it is then not resent).
#[tokio::test(flavor = "current_thread")]
async fn in_memory_bodies_cost_what_the_replay_table_says() {
    use bytes::Bytes;
    use http_body_util::{Empty, Full};
    let uri = "https://api.test/";
    let full = || {
        Request::post(uri)
            .body(Full::new(Bytes::from_static(b"{\"id\": 7}")))
            .unwrap()
    };
    let bytes = || {
        Request::post(uri)
            .body(Bytes::from_static(b"payload"))
            .unwrap()
    };
    let empty = || Request::get(uri).body(Empty::<Bytes>::new()).unwrap();
    for retry in [false, true] {
        assert_eq!(
            layered(retry, full).await,
            floor(full),
            "Full<Bytes>, retry {retry}"
        );
        assert_eq!(
            layered(retry, bytes).await,
            floor(bytes),
            "Bytes, retry {retry}"
        );
        assert_eq!(
            layered(retry, empty).await,
            floor(empty),
            "Empty, retry {retry}"
        );
    }
    let unit = || Request::get(uri).body(()).unwrap();
    let slice = || Request::post(uri).body(&b"payload"[..]).unwrap();
    for retry in [false, true] {
        assert_eq!(layered(retry, unit).await, floor(unit), "(), retry {retry}");
        assert_eq!(
            layered(retry, slice).await,
            floor(slice),
            "&'static [u8], retry {retry}"
        );
    }
    let vec = || Request::post(uri).body(b"payload".to_vec()).unwrap();
    assert_eq!(layered(false, vec).await, floor(vec));
    assert_eq!(
        layered(true, vec).await,
        floor(vec) + 1,
        "Vec<u8>: one copy"
    );
    let string = || Request::post(uri).body(String::from("payload")).unwrap();
    assert_eq!(layered(false, string).await, floor(string));
    assert_eq!(
        layered(true, string).await,
        floor(string) + 1,
        "one copy of the body, kept for a resend"
    );
    let large = || {
        Request::post(uri)
            .body("x".repeat(tower_bearer::layer::DEFAULT_REPLAY_LIMIT + 1))
            .unwrap()
    };
    assert_eq!(
        layered(true, large).await,
        floor(large),
        "past the limit: not copied"
    );
}

/// A streaming body kept for a resend: the frames are shared as they go, not copied; the layer
/// allocates the replay's shared state and the body's new box, a fixed count whatever the
/// body's size. Without retry, nothing.
#[tokio::test(flavor = "current_thread")]
async fn a_streaming_body_kept_for_a_resend_costs_three_allocations_whatever_its_size() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, combinators::BoxBody};
    let boxed = |len: usize| {
        move || {
            let body = Full::new(Bytes::from(vec![7u8; len])).map_err(|never| match never {});
            Request::post("https://api.test/")
                .body(BoxBody::<Bytes, tower_bearer::BoxError>::new(body))
                .unwrap()
        }
    };
    for len in [1, 60_000] {
        assert_eq!(layered(false, boxed(len)).await, floor(boxed(len)));
        assert_eq!(
            layered(true, boxed(len)).await,
            floor(boxed(len)) + 3,
            "a boxed body of {len} bytes"
        );
    }
}

#[cfg(feature = "jose")]
#[path = "support/static_dpop.rs"]
mod static_dpop;

/// A request with a DPoP-bound token costs what a bearer request costs, plus its proof: one
/// string, which becomes the `DPoP` header without a copy, and what AWS-LC allocates to sign
/// (counted here by signing with AWS-LC directly: 1 allocation for Ed25519; 3 or 4 for ECDSA
/// P-256, whose count varies from one signature to the next, so the least of several is
/// compared).
#[cfg(feature = "jose")]
#[tokio::test(flavor = "current_thread")]
async fn a_dpop_request_allocates_its_proof_and_nothing_else() {
    use tower_bearer::jose::SigningKey;
    let bare = || Request::get("https://api.test/items").body("").unwrap();
    for key in [
        SigningKey::generate_es256().unwrap(),
        SigningKey::generate_ed25519().unwrap(),
    ] {
        for retry in [false, true] {
            let source = static_dpop::StaticDpop {
                key: key.clone(),
                token: "cached-token-of-similar-length".to_owned(),
            };
            let mut svc = warm(source, retry, bare).await;
            let dpop = (0..SAMPLES)
                .map(|_| {
                    let req = bare();
                    allocations(|| run_once(&mut svc, req)).0
                })
                .min()
                .unwrap();
            assert_eq!(
                dpop,
                layered(retry, bare).await + 1 + signing_allocations(key.algorithm()),
                "{:?}, retry {retry}",
                key.algorithm()
            );
        }
    }
}

/// Signatures and requests counted for the least of their allocations.
#[cfg(feature = "jose")]
const SAMPLES: usize = 50;

/// The least AWS-LC allocates to sign once with a key of `algorithm`.
#[cfg(feature = "jose")]
fn signing_allocations(algorithm: tower_bearer::jose::Algorithm) -> usize {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
    let ecdsa = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let ed25519 = Ed25519KeyPair::generate().unwrap();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let message = [7u8; 200];
    (0..SAMPLES)
        .map(|_| match algorithm {
            tower_bearer::jose::Algorithm::ES256 => {
                allocations(|| ecdsa.sign(&rng, &message).unwrap()).0
            }
            _ => allocations(|| ed25519.sign(&message)).0,
        })
        .min()
        .unwrap()
}

#[test]
fn response_future_size() {
    use tower_bearer::ResponseFuture;
    let size = std::mem::size_of::<ResponseFuture<Noop, Request<&'static str>>>();
    let request = std::mem::size_of::<Request<&'static str>>();
    eprintln!("ResponseFuture<Noop, Request<&str>>: {size} bytes (the request itself: {request})");
    let _ = std::mem::size_of::<AuthService<Noop>>();
    assert!(size <= 2 * request + 64, "{size} bytes");
}
