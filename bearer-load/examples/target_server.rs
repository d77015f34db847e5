//! The API that `scripts/compare-load` loads with bearer-load and oha side by side: on
//! 127.0.0.1, HTTP/1.1 and HTTP/2 (h2c by prior knowledge), 200 with an empty body to
//! `Authorization: Bearer <token>`, 401 to anything else, and nothing more per request, so the
//! tools are what is measured.
//!
//! ```text
//! cargo run --release -p bearer-load --example target_server -- TOKEN [THREADS]
//! ```
//!
//! It prints `listening on 127.0.0.1:PORT` once it accepts connections, then serves until
//! killed.

use std::{env, net::SocketAddr};

use bytes::Bytes;
use http::{Response, StatusCode, header::AUTHORIZATION};
use http_body_util::Full;
use tokio::net::TcpListener;

fn main() {
    let mut args = env::args().skip(1);
    let token = args.next().expect("usage: target_server TOKEN [THREADS]");
    let threads = args
        .next()
        .map_or(1, |n| n.parse().expect("THREADS is a number"));
    let expected: &'static str = Box::leak(format!("Bearer {token}").into_boxed_str());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("a free port on 127.0.0.1");
        println!(
            "listening on {}",
            listener.local_addr().expect("an address")
        );
        bearer_load::demo::serve(listener, None, move |request| async move {
            let authorized = request
                .headers()
                .get(AUTHORIZATION)
                .is_some_and(|value| value.as_bytes() == expected.as_bytes());
            let mut response = Response::new(Full::new(Bytes::new()));
            if !authorized {
                *response.status_mut() = StatusCode::UNAUTHORIZED;
            }
            response
        })
        .await;
    });
}
