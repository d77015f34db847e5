//! The API that `scripts/compare-load` loads with bearer-load and oha side by side: on
//! 127.0.0.1, HTTP/1.1 and HTTP/2 (h2c by prior knowledge), 200 with an empty body to
//! `Authorization: Bearer <token>`, 401 to anything else, and nothing more per request, so the
//! tools are what is measured.
//!
//! It is its own token endpoint too, at `POST /oauth2/token`: `client_credentials` for the
//! demo's client (`bearer-load-demo` and its secret, in HTTP Basic or the form), answered with
//! the same token and `expires_in` of `TOKEN_LIFETIME` seconds (default 60). A tool that
//! fetches its token there, as bearer-load does with `--token-url`, sends the one a tool given
//! the token by hand sends.
//!
//! ```text
//! cargo run --release -p bearer-load --example target_server -- TOKEN [THREADS] [TOKEN_LIFETIME]
//! ```
//!
//! It prints `listening on 127.0.0.1:PORT` once it accepts connections, then serves until
//! killed.

use std::{env, net::SocketAddr};

use bytes::Bytes;
use http::{
    Method, Request, Response, StatusCode,
    header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue},
};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

fn main() {
    let mut args = env::args().skip(1);
    let usage = "usage: target_server TOKEN [THREADS] [TOKEN_LIFETIME]";
    let token = args.next().expect(usage);
    let threads = args.next().map_or(1, |n| n.parse().expect(usage));
    let lifetime: u64 = args.next().map_or(60, |n| n.parse().expect(usage));
    let expected: &'static str = Box::leak(format!("Bearer {token}").into_boxed_str());
    let issued: &'static str = Box::leak(
        serde_json::json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": lifetime,
        })
        .to_string()
        .into_boxed_str(),
    );
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
            if request.uri().path() == "/oauth2/token" {
                return token_endpoint(request, issued).await;
            }
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

/// `issued` to a `client_credentials` request from the demo's client; 401 otherwise.
async fn token_endpoint(request: Request<Incoming>, issued: &'static str) -> Response<Full<Bytes>> {
    let (status, body) = if request.method() == Method::POST
        && bearer_load::demo::is_demo_client_credentials(request).await
    {
        (StatusCode::OK, issued)
    } else {
        (StatusCode::UNAUTHORIZED, r#"{"error":"invalid_client"}"#)
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
