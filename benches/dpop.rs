//! What DPoP (RFC 9449) costs on the request path.
//!
//! - `dpop/proof/<alg>`: one proof with [`DpopProver::proof`] (for `GET` of a URL, with an
//!   access token, so `ath` is hashed each time), ES256 and EdDSA;
//! - `dpop/request/<variant>`: one request through a layer around a no-op inner service, the
//!   request built (its URI parsed) for each call, the service cloned for each call as
//!   `svc.clone().oneshot(req)` does:
//!   - `add_authorization_static`: tower-http's `AddAuthorization` with a fixed bearer token
//!     (the floor);
//!   - `bearer`: `AuthLayer` with a cached bearer token;
//!   - `dpop_es256`, `dpop_eddsa`: `AuthLayer` with a cached DPoP-bound token: the header and
//!     a fresh proof signed with a P-256 or Ed25519 key.
//!
//! A full run then sends requests from one thread per core (each with its own clone of one
//! layered service) and prints requests per second per core for each variant, the figure
//! BENCHMARKS.md reports.
//!
//! ```text
//! cargo bench --bench dpop
//! cargo bench --bench dpop -- --test   # each benchmark once, no table (CI)
//! ```

#[path = "../tests/support/noop.rs"]
mod noop;
#[path = "../tests/support/static_dpop.rs"]
mod static_dpop;

use std::{
    future::Future,
    pin::pin,
    sync::{Arc, Barrier},
    task::{Context, Poll, Waker},
    thread,
    time::{Duration, Instant},
};

use criterion::Criterion;
use http::Request;
use noop::Noop;
use static_dpop::StaticDpop;
use tower::{Layer, Service, util::BoxCloneSyncService};
use tower_bearer::{
    AuthLayer, StaticToken,
    jose::{DpopProver, SigningKey},
};
use tower_http::auth::AddAuthorizationLayer;

const TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJl";
const VARIANTS: [&str; 4] = [
    "add_authorization_static",
    "bearer",
    "dpop_es256",
    "dpop_eddsa",
];

type Req = Request<&'static str>;
type Svc = BoxCloneSyncService<Req, http::Response<()>, tower::BoxError>;

fn request() -> Req {
    Request::get("https://api.test/items?page=1")
        .body("")
        .unwrap()
}

/// A layered no-op service for `variant`, its token cached.
fn service(variant: &str, runtime: &tokio::runtime::Runtime) -> Svc {
    let auth = |auth: AuthLayer| {
        runtime.block_on(auth.token()).unwrap();
        BoxCloneSyncService::new(auth.layer(Noop))
    };
    let dpop = |key: SigningKey| {
        AuthLayer::new(StaticDpop {
            key,
            token: TOKEN.to_owned(),
        })
    };
    match variant {
        "add_authorization_static" => BoxCloneSyncService::new(
            tower::ServiceBuilder::new()
                .map_err(|e: std::convert::Infallible| -> tower::BoxError { match e {} })
                .layer(AddAuthorizationLayer::bearer(TOKEN))
                .service(Noop),
        ),
        "bearer" => auth(AuthLayer::new(StaticToken::new(TOKEN))),
        "dpop_es256" => auth(dpop(SigningKey::generate_es256().unwrap())),
        "dpop_eddsa" => auth(dpop(SigningKey::generate_ed25519().unwrap())),
        other => panic!("unknown variant {other}"),
    }
}

/// One request on a clone of `svc`, polled by hand (the inner service never waits).
#[inline(always)]
fn one(svc: &Svc) {
    let mut svc = svc.clone();
    let mut cx = Context::from_waker(Waker::noop());
    let _ = svc.poll_ready(&mut cx);
    let mut fut = pin!(svc.call(request()));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(response) => {
            let response = response.unwrap();
            debug_assert!(response.status().is_success());
            std::hint::black_box(response);
        }
        Poll::Pending => unreachable!("no-op inner service"),
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let mut criterion = Criterion::default().configure_from_args();
    {
        let mut group = criterion.benchmark_group("dpop/proof");
        for (name, key) in [
            ("ES256", SigningKey::generate_es256().unwrap()),
            ("EdDSA", SigningKey::generate_ed25519().unwrap()),
        ] {
            let prover = DpopProver::new(key);
            group.bench_function(name, |b| {
                b.iter(|| {
                    prover
                        .proof("GET", "https://api.test/items", Some(TOKEN), None)
                        .unwrap()
                })
            });
        }
        group.finish();
    }
    {
        let mut group = criterion.benchmark_group("dpop/request");
        for variant in VARIANTS {
            let svc = service(variant, &runtime);
            group.bench_function(variant, |b| b.iter(|| one(&svc)));
        }
        group.finish();
    }
    criterion.final_summary();
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    per_core(&runtime);
}

/// Requests per second per core, every core sending through its own clone of one service.
fn per_core(runtime: &tokio::runtime::Runtime) {
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let duration = Duration::from_secs(3);
    println!(
        "\nrequests per second per core ({cores} cores, {} s each):\n",
        duration.as_secs()
    );
    println!("| variant | requests/s per core | vs. the floor |");
    println!("|---|---:|---:|");
    let mut floor = None;
    for variant in VARIANTS {
        let svc = service(variant, runtime);
        let barrier = Arc::new(Barrier::new(cores));
        let handle = runtime.handle().clone();
        let threads: Vec<_> = (0..cores)
            .map(|_| {
                let (svc, barrier, handle) = (svc.clone(), Arc::clone(&barrier), handle.clone());
                thread::spawn(move || {
                    let _entered = handle.enter();
                    barrier.wait();
                    let started = Instant::now();
                    let mut sent = 0u64;
                    while started.elapsed() < duration {
                        for _ in 0..64 {
                            one(&svc);
                        }
                        sent += 64;
                    }
                    sent as f64 / started.elapsed().as_secs_f64()
                })
            })
            .collect();
        let rates: Vec<f64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let per_core = rates.iter().sum::<f64>() / cores as f64;
        let floor = *floor.get_or_insert(per_core);
        println!("| {variant} | {:.0} | {:.3} |", per_core, per_core / floor);
    }
}
