//! Per-request cost of attaching a token, around a no-op inner service, single-threaded:
//! no middleware, tower-http's `AddAuthorization` with a fixed token (the floor), and
//! `AuthLayer` with a cached token (retry on and off).
//!
//! ```text
//! cargo bench --bench hot_path
//! scripts/instructions        # instructions per request, under valgrind's callgrind
//! ```
//!
//! With `HOT_PATH_LOOP=<variant>:<n>` set, the binary skips criterion and just sends `n`
//! requests through one variant: that is what `scripts/instructions` counts.

#[path = "../tests/support/noop.rs"]
mod noop;

use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use criterion::{Criterion, criterion_group};
use http::Request;
use noop::Noop;
use tower::{Layer, Service};
use tower_bearer::{AuthLayer, StaticToken};
use tower_http::auth::AddAuthorizationLayer;

const TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJl";

fn request() -> Request<&'static str> {
    Request::get("https://api.test/items").body("").unwrap()
}

/// One request: ready, call, poll the future to completion.
#[inline(always)]
fn one<S>(svc: &mut S)
where
    S: Service<Request<&'static str>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let _ = svc.poll_ready(&mut cx);
    let mut fut = pin!(svc.call(request()));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(r) => {
            std::hint::black_box(r.unwrap());
        }
        Poll::Pending => unreachable!("no-op inner service"),
    }
}

/// A layered service with a cached token.
fn auth_layer(rt: &tokio::runtime::Runtime, retry: bool) -> tower_bearer::AuthService<Noop> {
    let auth = AuthLayer::builder(StaticToken::new(TOKEN))
        .retry_unauthorized(retry)
        .build();
    rt.block_on(auth.token()).unwrap();
    auth.layer(Noop)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn hot_path(c: &mut Criterion) {
    let rt = runtime();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("hot_path");

    let mut bare = Noop;
    group.bench_function("no_middleware", |b| b.iter(|| one(&mut bare)));

    let mut fixed = AddAuthorizationLayer::bearer(TOKEN).layer(Noop);
    group.bench_function("add_authorization_static", |b| b.iter(|| one(&mut fixed)));

    let mut svc = auth_layer(&rt, false);
    group.bench_function("auth_layer_retry_off", |b| b.iter(|| one(&mut svc)));
    let mut svc = auth_layer(&rt, true);
    group.bench_function("auth_layer", |b| b.iter(|| one(&mut svc)));
    group.finish();
}

/// `HOT_PATH_LOOP=<variant>:<n>`: `n` requests through one variant, nothing else.
fn run_loop(spec: &str) {
    let (variant, n) = spec.split_once(':').expect("HOT_PATH_LOOP=<variant>:<n>");
    let n: u64 = n.parse().expect("a request count");
    let rt = runtime();
    let _guard = rt.enter();
    match variant {
        "no_middleware" => (0..n).for_each(|_| one(&mut Noop)),
        "add_authorization_static" => {
            let mut svc = AddAuthorizationLayer::bearer(TOKEN).layer(Noop);
            (0..n).for_each(|_| one(&mut svc));
        }
        "auth_layer_retry_off" | "auth_layer" => {
            let mut svc = auth_layer(&rt, variant == "auth_layer");
            (0..n).for_each(|_| one(&mut svc));
        }
        other => panic!("unknown variant {other}"),
    }
}

criterion_group!(benches, hot_path);

fn main() {
    match std::env::var("HOT_PATH_LOOP") {
        Ok(spec) => run_loop(&spec),
        Err(_) => {
            benches();
            Criterion::default().configure_from_args().final_summary();
        }
    }
}
