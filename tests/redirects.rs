//! Where the token goes when tower-http's `FollowRedirect` follows a redirect to another origin:
//! two real servers on 127.0.0.1 (two ports, two origins), the first redirecting to the second.
//!
//! - Follower **outside** the layer, layer limited with `origin`: every hop passes through the
//!   layer, and the hop to the other origin goes without the token, whatever header carries it.
//! - Follower **inside** the layer: the token is added once; tower-http's `FilterCredentials`
//!   strips `Authorization` on the cross-origin hop, but not a custom header: put the follower
//!   outside, or add the layer's `redirect_filter()` to its policy (feature `follow-redirect`).

mod support;

use std::time::Duration;

use axum::{http::header, response::IntoResponse};
use bytes::Bytes;
use http::{HeaderName, Request, StatusCode};
use http_body_util::Empty;
use support::{
    CountingSource, StandInEndpoint,
    upload::{Protocol, client},
};
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::{AuthLayer, AuthLayerBuilder};
use tower_http::follow_redirect::FollowRedirectLayer;

const CUSTOM: HeaderName = HeaderName::from_static("x-api-token");

/// A server that redirects every request to `target`, and the target, which answers 200.
async fn servers() -> (StandInEndpoint, StandInEndpoint) {
    let target = StandInEndpoint::start(|_| StatusCode::OK.into_response()).await;
    let location = target.url("/landed");
    let first = StandInEndpoint::start(move |_| {
        (StatusCode::FOUND, [(header::LOCATION, location.clone())]).into_response()
    })
    .await;
    (first, target)
}

fn layer(configure: impl FnOnce(AuthLayerBuilder) -> AuthLayerBuilder) -> AuthLayer {
    let source = CountingSource::new(Duration::ZERO, Some(Duration::from_secs(3600)));
    configure(AuthLayer::builder(source)).build().unwrap()
}

fn get(url: String) -> Request<Empty<Bytes>> {
    Request::get(url).body(Empty::new()).unwrap()
}

/// The token headers each server saw: (`authorization`, `x-api-token`).
fn seen(server: &StandInEndpoint) -> Vec<(Option<String>, Option<String>)> {
    server
        .recorded()
        .iter()
        .map(|r| {
            (
                r.header("authorization").map(str::to_owned),
                r.header("x-api-token").map(str::to_owned),
            )
        })
        .collect()
}

fn origin(server: &StandInEndpoint) -> String {
    server.url("").trim_end_matches('/').to_owned()
}

#[tokio::test]
async fn a_follower_outside_a_layer_limited_to_its_origin_sends_no_token_across_origins() {
    for custom in [false, true] {
        let (first, target) = servers().await;
        let auth = layer(|b| {
            let b = b.origin(origin(&first));
            if custom {
                b.header_name(CUSTOM).scheme("")
            } else {
                b
            }
        });
        let svc = ServiceBuilder::new()
            .layer(FollowRedirectLayer::new())
            .layer(auth)
            .service(client::<Empty<Bytes>>(Protocol::Http1));
        let response = svc.oneshot(get(first.url("/start"))).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let token = Some("tok-1".to_owned());
        let expected = if custom {
            (None, token)
        } else {
            (Some("Bearer tok-1".to_owned()), None)
        };
        assert_eq!(seen(&first), [expected], "the first hop carries it");
        assert_eq!(
            seen(&target),
            [(None, None)],
            "the other origin gets nothing"
        );
    }
}

/// Without `origin`, the layer cannot tell a hop from a request: the other origin, being
/// loopback http here (https in life), gets the token. This is why a client that follows
/// redirects needs `origin`.
#[tokio::test]
async fn a_follower_outside_a_layer_without_origins_sends_the_token_on_every_hop() {
    let (first, target) = servers().await;
    let svc = ServiceBuilder::new()
        .layer(FollowRedirectLayer::new())
        .layer(layer(|b| b))
        .service(client::<Empty<Bytes>>(Protocol::Http1));
    svc.oneshot(get(first.url("/start"))).await.unwrap();
    assert_eq!(seen(&target), [(Some("Bearer tok-1".to_owned()), None)]);
}

#[tokio::test]
async fn a_follower_inside_the_layer_strips_authorization_across_origins_but_not_a_custom_header() {
    let (first, target) = servers().await;
    let svc = ServiceBuilder::new()
        .layer(layer(|b| b))
        .layer(FollowRedirectLayer::new())
        .service(client::<Empty<Bytes>>(Protocol::Http1));
    svc.oneshot(get(first.url("/start"))).await.unwrap();
    assert_eq!(seen(&first), [(Some("Bearer tok-1".to_owned()), None)]);
    assert_eq!(
        seen(&target),
        [(None, None)],
        "FilterCredentials stripped it"
    );

    let (first, target) = servers().await;
    let svc = ServiceBuilder::new()
        .layer(layer(|b| b.header_name(CUSTOM).scheme("")))
        .layer(FollowRedirectLayer::new())
        .service(client::<Empty<Bytes>>(Protocol::Http1));
    svc.oneshot(get(first.url("/start"))).await.unwrap();
    assert_eq!(
        seen(&target),
        [(None, Some("tok-1".to_owned()))],
        "a custom header is not stripped: put the follower outside the layer"
    );
}

/// With the follower inside the layer, the layer's `redirect_filter()` in the follower's policy
/// strips the token from the hop to another origin whatever header carries it.
#[cfg(feature = "follow-redirect")]
#[tokio::test]
async fn the_layers_redirect_filter_strips_a_custom_header_across_origins() {
    use tower_http::follow_redirect::policy::{PolicyExt, Standard};

    let (first, target) = servers().await;
    let auth = layer(|b| b.header_name(CUSTOM).scheme(""));
    let policy = Standard::default()
        .and::<_, Empty<Bytes>, hyper_util::client::legacy::Error>(auth.redirect_filter());
    let svc = ServiceBuilder::new()
        .layer(auth)
        .layer(FollowRedirectLayer::with_policy(policy))
        .service(client::<Empty<Bytes>>(Protocol::Http1));
    let response = svc.oneshot(get(first.url("/start"))).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(seen(&first), [(None, Some("tok-1".to_owned()))]);
    assert_eq!(
        seen(&target),
        [(None, None)],
        "the custom header was stripped"
    );
}

/// `redirect_filter()` strips the token header from the first hop to another origin on: on a
/// redirect A → B → B → A, B gets no token, on the hop to it nor on the same-origin hop within
/// it, and neither does the hop back to A.
#[cfg(feature = "follow-redirect")]
#[tokio::test]
async fn the_layers_redirect_filter_keeps_a_custom_header_off_every_hop_after_another_origin() {
    use std::sync::{Arc, OnceLock};

    use tower_http::follow_redirect::policy::{PolicyExt, Standard};

    let found = |location: String| (StatusCode::FOUND, [(header::LOCATION, location)]);
    // A's /start redirects to B's /bounce, which redirects to B's /again, which redirects back
    // to A's /back, which answers 200.
    let b_base = Arc::new(OnceLock::<String>::new());
    let a = {
        let b_base = Arc::clone(&b_base);
        StandInEndpoint::start(move |req| match req.path.as_str() {
            "/start" => found(format!("{}/bounce", b_base.get().unwrap())).into_response(),
            _ => StatusCode::OK.into_response(),
        })
        .await
    };
    let back = a.url("/back");
    let b = StandInEndpoint::start(move |req| match req.path.as_str() {
        "/bounce" => found("/again".to_owned()).into_response(),
        _ => found(back.clone()).into_response(),
    })
    .await;
    b_base.set(origin(&b)).unwrap();

    let auth = layer(|builder| builder.header_name(CUSTOM).scheme(""));
    let policy = Standard::default()
        .and::<_, Empty<Bytes>, hyper_util::client::legacy::Error>(auth.redirect_filter());
    let svc = ServiceBuilder::new()
        .layer(auth)
        .layer(FollowRedirectLayer::with_policy(policy))
        .service(client::<Empty<Bytes>>(Protocol::Http1));
    let response = svc.oneshot(get(a.url("/start"))).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let paths = |server: &StandInEndpoint| -> Vec<String> {
        server.recorded().iter().map(|r| r.path.clone()).collect()
    };
    assert_eq!(paths(&a), ["/start", "/back"]);
    assert_eq!(paths(&b), ["/bounce", "/again"]);
    assert_eq!(
        seen(&a),
        [(None, Some("tok-1".to_owned())), (None, None)],
        "the first request carries it, the hop back to A does not"
    );
    assert_eq!(
        seen(&b),
        [(None, None), (None, None)],
        "stripped on the hop to B, and on the same-origin hop within B"
    );
}

/// The headers the target of a redirect saw: (`authorization`, `x-api-token`, `dpop`).
#[cfg(feature = "jose")]
fn seen_with_dpop(server: &StandInEndpoint) -> Vec<(Option<String>, Option<String>, bool)> {
    let dpop: Vec<bool> = (server.recorded().iter())
        .map(|r| r.header("dpop").is_some())
        .collect();
    seen(server)
        .into_iter()
        .zip(dpop)
        .map(|((authorization, api_token), dpop)| (authorization, api_token, dpop))
        .collect()
}

/// A `reqwest::Client` follows redirects inside the layer and removes only `Authorization` on
/// a hop to another origin: without the layer's policy, a custom token header reaches the
/// other origin (the hazard). With `reqwest_redirect_policy()`, the client refuses that hop:
/// the 302 comes back to the caller and the other origin gets nothing. A layer sending
/// `Authorization: Bearer` alone still follows, and reqwest removes the header.
#[cfg(feature = "oauth")]
#[tokio::test]
async fn a_reqwest_client_with_the_layers_policy_sends_no_custom_token_to_another_origin() {
    let send = |auth: AuthLayer, client: reqwest::Client, url: String| async move {
        ServiceBuilder::new()
            .layer(auth)
            .service(client)
            .oneshot(reqwest::Request::new(
                http::Method::GET,
                url.parse().unwrap(),
            ))
            .await
            .unwrap()
            .status()
    };

    // reqwest's default policy: the custom header follows.
    let (first, target) = servers().await;
    let status = send(
        layer(|b| b.header_name(CUSTOM).scheme("")),
        reqwest::Client::new(),
        first.url("/start"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen(&target), [(None, Some("tok-1".to_owned()))]);

    // The layer's policy: the hop is refused.
    let (first, target) = servers().await;
    let auth = layer(|b| b.header_name(CUSTOM).scheme(""));
    let client = reqwest::Client::builder()
        .redirect(auth.reqwest_redirect_policy())
        .build()
        .unwrap();
    let status = send(auth, client, first.url("/start")).await;
    assert_eq!(status, StatusCode::FOUND, "the redirect goes to the caller");
    assert_eq!(seen(&first), [(None, Some("tok-1".to_owned()))]);
    assert!(target.recorded().is_empty(), "the other origin was asked");

    // `Authorization: Bearer`: followed, and reqwest removes the header.
    let (first, target) = servers().await;
    let auth = layer(|b| b);
    let client = reqwest::Client::builder()
        .redirect(auth.reqwest_redirect_policy())
        .build()
        .unwrap();
    assert_eq!(
        send(auth, client, first.url("/start")).await,
        StatusCode::OK
    );
    assert_eq!(seen(&target), [(None, None)]);
}

#[cfg(feature = "jose")]
#[path = "support/static_dpop.rs"]
mod static_dpop;

/// The same for a DPoP-bound token: reqwest removes `Authorization: DPoP ...` but not the
/// `DPoP` proof; with the layer's policy, the hop to another origin is refused.
#[cfg(feature = "jose")]
#[tokio::test]
async fn a_reqwest_client_with_the_layers_policy_sends_no_dpop_proof_to_another_origin() {
    let dpop = || static_dpop::StaticDpop {
        key: tower_bearer::jose::SigningKey::generate_es256().unwrap(),
        token: "dpop-token".to_owned(),
    };
    let get = |url: String| reqwest::Request::new(http::Method::GET, url.parse().unwrap());

    let (first, target) = servers().await;
    let auth = AuthLayer::new(dpop());
    let svc = ServiceBuilder::new()
        .layer(auth)
        .service(reqwest::Client::new());
    svc.oneshot(get(first.url("/start"))).await.unwrap();
    assert_eq!(
        seen_with_dpop(&target),
        [(None, None, true)],
        "the proof followed"
    );

    let (first, target) = servers().await;
    let auth = AuthLayer::new(dpop());
    let client = reqwest::Client::builder()
        .redirect(auth.reqwest_redirect_policy())
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(auth).service(client);
    let response = svc.oneshot(get(first.url("/start"))).await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(
        seen_with_dpop(&first),
        [(Some("DPoP dpop-token".to_owned()), None, true)]
    );
    assert!(target.recorded().is_empty());
}
