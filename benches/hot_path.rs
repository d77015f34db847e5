//! Per-request cost of attaching a token, around a no-op inner service, single-threaded:
//! no middleware, tower-http's `AddAuthorization` with a fixed token (the floor), and
//! `AuthLayer` with a cached token (retry on and off).
//!
//! ```text
//! cargo bench --bench hot_path
//! ```

#[path = "../tests/support/noop.rs"]
mod noop;

use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use criterion::{Criterion, criterion_group, criterion_main};
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

fn hot_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("hot_path");

    let mut bare = Noop;
    group.bench_function("no_middleware", |b| b.iter(|| one(&mut bare)));

    let mut fixed = AddAuthorizationLayer::bearer(TOKEN).layer(Noop);
    group.bench_function("add_authorization_static", |b| b.iter(|| one(&mut fixed)));

    for (name, retry) in [("auth_layer_retry_off", false), ("auth_layer", true)] {
        let auth = AuthLayer::builder(StaticToken::new(TOKEN))
            .retry_unauthorized(retry)
            .build();
        rt.block_on(auth.token()).unwrap();
        let mut svc = auth.layer(Noop);
        group.bench_function(name, |b| b.iter(|| one(&mut svc)));
    }
    group.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
