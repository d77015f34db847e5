//! tower-http's `FollowRedirect` with the layer: the token follows a redirect within its origin
//! and never one to another origin, whatever header carries it. Needs no credentials and no
//! network.
//!
//! It starts two servers on 127.0.0.1 (random ports, so two origins), each recording the token
//! header of every request it gets:
//! - the API: `GET /old` redirects to `/new` on the same server; `GET /moved` redirects to the
//!   other server; everything else answers 200;
//! - another service, which answers 200.
//!
//! The API wants its token in a custom header (`X-Api-Token`), which tower-http's own
//! `FilterCredentials` does not know. The follower sits inside the layer, so the token is added
//! once and the follower copies it to every hop; the layer's `redirect_filter()` in the
//! follower's policy takes it off the first hop to another origin.
//!
//! ```text
//! cargo run --example follow_redirect --features follow-redirect
//! ```

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::{Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use http::HeaderName;
use http_body_util::Empty;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::{AuthLayer, BoxError, StaticToken};
use tower_http::follow_redirect::{
    FollowRedirectLayer,
    policy::{PolicyExt, Standard},
};

type Body = Empty<Bytes>;
const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-api-token");

/// A request as a server saw it: its path and its token header.
type Hop = (String, Option<String>);

/// What a server saw.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Hop>>>);

impl Seen {
    fn take(&self) -> Vec<Hop> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

/// Starts a server that records every request and answers with `answer(path)`.
async fn serve(
    answer: impl Fn(&str) -> Response + Clone + Send + Sync + 'static,
) -> (String, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .fallback(move |State(seen): State<Seen>, request: Request| {
            let answer = answer.clone();
            async move {
                let path = request.uri().path().to_owned();
                let token = request
                    .headers()
                    .get(TOKEN_HEADER)
                    .map(|v| v.to_str().unwrap().to_owned());
                seen.0.lock().unwrap().push((path.clone(), token));
                answer(&path)
            }
        })
        .with_state(seen.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

fn redirect(to: String) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (other, other_seen) = serve(|_| StatusCode::OK.into_response()).await;
    let elsewhere = format!("{other}/landed");
    let (api, api_seen) = serve(move |path| match path {
        "/old" => redirect("/new".to_owned()),
        "/moved" => redirect(elsewhere.clone()),
        _ => StatusCode::OK.into_response(),
    })
    .await;

    let auth = AuthLayer::builder(StaticToken::new("t0k3n"))
        .header_name(TOKEN_HEADER)
        .scheme("") // the token alone, as the API wants it
        .build()?;
    // tower-http's standard policy (at most 20 hops, FilterCredentials), and the layer's filter.
    let policy = Standard::default().and::<_, Body, Infallible>(auth.redirect_filter());
    let client = ServiceBuilder::new()
        .layer(auth)
        .layer(FollowRedirectLayer::with_policy(policy))
        .service(Client::builder(TokioExecutor::new()).build_http::<Body>());

    // A redirect within the API's origin: the token goes with it.
    let request = http::Request::get(format!("{api}/old")).body(Body::new())?;
    let response = client.clone().oneshot(request).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let hops = api_seen.take();
    println!("same origin:  {hops:?}");
    assert_eq!(
        hops,
        [
            ("/old".into(), Some("t0k3n".into())),
            ("/new".into(), Some("t0k3n".into()))
        ]
    );

    // A redirect to another origin: the first request carries the token, the hop does not.
    let request = http::Request::get(format!("{api}/moved")).body(Body::new())?;
    let response = client.oneshot(request).await?;
    assert_eq!(response.status(), StatusCode::OK);
    println!("API saw:      {:?}", api_seen.take());
    let landed = other_seen.take();
    println!("elsewhere:    {landed:?}");
    assert_eq!(
        landed,
        [("/landed".into(), None)],
        "the token must not leave its origin"
    );

    println!(
        "the token followed the redirect within its origin, and not the one to another origin"
    );
    Ok(())
}
