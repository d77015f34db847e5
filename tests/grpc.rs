//! `AuthLayer` in front of a real `tonic::transport::Channel`, talking to a real tonic server on
//! 127.0.0.1 whose interceptor accepts exactly the tokens `CountingSource` issued and has not
//! revoked, and answers anything else with `UNAUTHENTICATED` (HTTP 200, `grpc-status: 16` in a
//! trailers-only response). The Echo service comes from `tests/grpc-fixture` (tonic's codegen).
#![cfg(feature = "tonic")]

mod support;

use std::{sync::Arc, time::Duration};

use grpc_fixture::{
    EchoClient, Msg, Running,
    tokio_stream::{self, wrappers::ReceiverStream},
};
use tokio::sync::{Semaphore, mpsc};
use tonic::{
    Code, Request, Status,
    transport::{Channel, Endpoint},
};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_bearer::{AuthLayer, AuthService};

use support::CountingSource;

type Client = EchoClient<AuthService<Channel>>;

/// The server's interceptor: records the `authorization` metadata of every call and lets
/// through only the tokens the source issued and has not revoked (`ProtectedApi::check`).
fn check_token(
    source: &CountingSource,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
    let api = source.api();
    move |request: Request<()>| {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if api.check(&authorization) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("invalid bearer token"))
        }
    }
}

struct Setup {
    source: CountingSource,
    auth: AuthLayer,
    server: Running,
    channel: Channel,
    client: Client,
}

/// A server, a channel to it, and the channel wrapped in `AuthLayer` as a generated client
/// takes it.
async fn setup(fetch_latency: Duration) -> Setup {
    let source = CountingSource::new(fetch_latency, Some(Duration::from_secs(3600)));
    let server = grpc_fixture::serve(check_token(&source)).await.unwrap();
    let channel = Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let auth = AuthLayer::builder(source.clone())
        .channel_origin(server.url())
        .build()
        .unwrap();
    let client = EchoClient::new(
        ServiceBuilder::new()
            .layer(auth.clone())
            .service(channel.clone()),
    );
    Setup {
        source,
        auth,
        server,
        channel,
        client,
    }
}

fn msg(text: &str, n: u32) -> Msg {
    Msg {
        text: text.to_owned(),
        n,
    }
}

async fn say(client: &mut Client, text: &str) -> Result<String, Status> {
    Ok(client.say(msg(text, 0)).await?.into_inner().text)
}

/// The texts of a `Count` stream, or the status it failed with (at the call or mid-stream).
async fn count(client: &mut Client, text: &str, n: u32) -> Result<Vec<String>, Status> {
    let mut stream = client.count(msg(text, n)).await?.into_inner();
    let mut texts = Vec::new();
    while let Some(item) = stream.message().await? {
        texts.push(item.text);
    }
    Ok(texts)
}

#[tokio::test]
async fn unary_call_carries_the_bearer_token() {
    let Setup {
        source,
        auth,
        server,
        mut client,
        ..
    } = setup(Duration::from_millis(1)).await;

    assert_eq!(say(&mut client, "hello").await.unwrap(), "hello");
    assert_eq!(say(&mut client, "again").await.unwrap(), "again");

    let api = source.api();
    assert_eq!(
        *api.state().authorization.lock().unwrap(),
        ["Bearer tok-1", "Bearer tok-1"]
    );
    assert_eq!(source.fetches(), 1);
    assert_eq!(auth.stats().retries, 0);
    assert_eq!(api.unauthorized(), 0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unary_calls_on_a_cold_cache_fetch_once() {
    let Setup {
        source,
        auth,
        server,
        client,
        ..
    } = setup(Duration::from_millis(50)).await;

    let calls: Vec<_> = (0..32)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move { say(&mut client, &format!("call {i}")).await })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), format!("call {i}"));
    }

    let api = source.api();
    assert_eq!(source.fetches(), 1, "one fetch for 32 waiting calls");
    assert_eq!(api.requests(), 32);
    assert!(api.seen().iter().all(|t| t == "tok-1"), "{:?}", api.seen());
    assert_eq!(auth.stats().retries, 0);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn unary_call_with_a_revoked_token_succeeds_after_one_refresh_and_one_retry() {
    let Setup {
        source,
        auth,
        server,
        mut client,
        ..
    } = setup(Duration::from_millis(1)).await;
    let api = source.api();

    assert_eq!(say(&mut client, "before").await.unwrap(), "before");
    api.revoke("tok-1");

    assert_eq!(say(&mut client, "after").await.unwrap(), "after");
    assert_eq!(source.fetches(), 2);
    assert_eq!(auth.stats().retries, 1);
    // The second call reached the server twice: refused with tok-1, answered with tok-2.
    assert_eq!(api.requests(), 3);
    assert_eq!(api.seen(), ["tok-1", "tok-1", "tok-2"]);
    assert_eq!(api.unauthorized(), 1);

    assert_eq!(say(&mut client, "later").await.unwrap(), "later");
    assert_eq!(source.fetches(), 2);
    assert_eq!(api.seen().last().unwrap(), "tok-2");
    server.shutdown().await.unwrap();
}

/// A server-streaming call sends one request message, like a unary call, so its request body
/// is replayed the same way: the UNAUTHENTICATED trailers-only response is never seen by the
/// caller, the call is resent with the new token and the stream arrives whole.
#[tokio::test]
async fn server_streaming_call_with_a_revoked_token_is_retried_too() {
    let Setup {
        source,
        auth,
        server,
        mut client,
        ..
    } = setup(Duration::from_millis(1)).await;
    let api = source.api();

    assert_eq!(count(&mut client, "a", 2).await.unwrap(), ["a 1", "a 2"]);
    api.revoke("tok-1");

    assert_eq!(
        count(&mut client, "b", 3).await.unwrap(),
        ["b 1", "b 2", "b 3"]
    );
    assert_eq!(source.fetches(), 2);
    assert_eq!(auth.stats().retries, 1);
    assert_eq!(api.seen(), ["tok-1", "tok-1", "tok-2"]);

    // The next call uses tok-2 without another fetch.
    assert_eq!(say(&mut client, "next").await.unwrap(), "next");
    assert_eq!(api.seen().last().unwrap(), "tok-2");
    assert_eq!(source.fetches(), 2);
    server.shutdown().await.unwrap();
}

/// With retries off (or a body that cannot be replayed) a streaming call's UNAUTHENTICATED goes
/// back to the caller, and it still makes the layer drop the rejected token: the next call
/// carries tok-2.
#[tokio::test]
async fn streaming_unauthenticated_without_retry_reaches_the_caller_and_refreshes() {
    let Setup {
        source,
        server,
        channel,
        ..
    } = setup(Duration::from_millis(1)).await;
    let api = source.api();
    let auth = AuthLayer::builder(source.clone())
        .channel_origin(server.url())
        .retry_unauthorized(false)
        .build()
        .unwrap();
    let mut client = EchoClient::new(ServiceBuilder::new().layer(auth.clone()).service(channel));

    assert_eq!(count(&mut client, "a", 1).await.unwrap(), ["a 1"]);
    api.revoke("tok-1");

    let status = count(&mut client, "b", 3).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(source.fetches(), 1, "the refresh is for the next call");
    assert_eq!(auth.stats().retries, 0);

    assert_eq!(count(&mut client, "c", 2).await.unwrap(), ["c 1", "c 2"]);
    assert_eq!(source.fetches(), 2);
    assert_eq!(api.seen(), ["tok-1", "tok-1", "tok-2"]);
    server.shutdown().await.unwrap();
}

/// A client-streaming call whose whole request stream is already sent when the refusal comes
/// is resent like a unary one.
#[tokio::test]
async fn client_streaming_call_with_a_short_stream_is_retried() {
    let Setup {
        source,
        auth,
        server,
        mut client,
        ..
    } = setup(Duration::from_millis(1)).await;
    let api = source.api();

    assert_eq!(say(&mut client, "warm").await.unwrap(), "warm");
    api.revoke("tok-1");

    let words = tokio_stream::iter(["x", "y", "z"].map(|w| msg(w, 0)));
    let joined = client.join(words).await.unwrap().into_inner();
    assert_eq!((joined.text.as_str(), joined.n), ("x y z", 3));
    assert_eq!(source.fetches(), 2);
    assert_eq!(auth.stats().retries, 1);
    assert_eq!(api.seen(), ["tok-1", "tok-1", "tok-2"]);
    server.shutdown().await.unwrap();
}

/// A client-streaming call refused while its request stream is still open: the refusal drops
/// tok-1, and the call is resent with tok-2. Whatever the resend does, it must not lose the
/// messages that were not yet sent when the refusal came.
#[tokio::test]
async fn client_streaming_call_refused_mid_stream() {
    let Setup {
        source,
        auth,
        server,
        mut client,
        ..
    } = setup(Duration::from_millis(1)).await;
    let api = source.api();

    assert_eq!(say(&mut client, "warm").await.unwrap(), "warm");
    api.revoke("tok-1");

    let (tx, rx) = mpsc::channel(4);
    tx.send(msg("x", 0)).await.unwrap();
    let call = tokio::spawn(async move { client.join(ReceiverStream::new(rx)).await });
    // Let the refusal come back and the resend start while the stream is still open.
    while auth.stats().retries == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    tx.send(msg("y", 0)).await.unwrap();
    tx.send(msg("z", 0)).await.unwrap();
    drop(tx);

    let outcome = call.await.unwrap();
    assert_eq!(source.fetches(), 2);
    assert_eq!(auth.stats().retries, 1);
    assert_eq!(api.seen(), ["tok-1", "tok-1", "tok-2"]);
    let joined = outcome.unwrap().into_inner();
    // The resend replays the kept "x", then reads on from the original request stream.
    assert_eq!(
        (joined.text.as_str(), joined.n),
        ("x y z", 3),
        "the resend lost messages"
    );
    server.shutdown().await.unwrap();
}

/// A request message larger than the replay limit cannot be resent: the UNAUTHENTICATED goes
/// back to the caller, and the next call carries the new token.
#[tokio::test]
async fn unary_call_over_the_replay_limit_returns_unauthenticated_and_refreshes() {
    let Setup {
        source,
        server,
        channel,
        ..
    } = setup(Duration::from_millis(1)).await;
    let api = source.api();
    let auth = AuthLayer::builder(source.clone())
        .channel_origin(server.url())
        .replay_limit(16)
        .build()
        .unwrap();
    let mut client = EchoClient::new(ServiceBuilder::new().layer(auth.clone()).service(channel));

    assert_eq!(say(&mut client, "short").await.unwrap(), "short");
    api.revoke("tok-1");

    let long = "x".repeat(100);
    let status = say(&mut client, &long).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(source.fetches(), 1);
    assert_eq!(auth.stats().retries, 0);
    assert_eq!(auth.stats().unauthorized, 1);

    assert_eq!(say(&mut client, &long).await.unwrap(), long);
    assert_eq!(source.fetches(), 2);
    assert_eq!(api.seen(), ["tok-1", "tok-1", "tok-2"]);
    server.shutdown().await.unwrap();
}

/// A call that carried tok-1 but is refused only after tok-2 replaced it (another call already
/// refreshed) does not make the layer fetch again: the cache forgets a token only while it is
/// still the current one. The late call is resent with tok-2.
#[tokio::test]
async fn unauthenticated_for_a_token_no_longer_current_causes_no_extra_fetch() {
    let Setup {
        source,
        auth,
        server,
        channel,
        mut client,
    } = setup(Duration::from_millis(1)).await;
    let api = source.api();

    // A second client on the same layer (so the same token cache) whose calls wait at a gate
    // below the layer: they carry the token they were given when the gate opens.
    let gate = Arc::new(Semaphore::new(0));
    let held = {
        let gate = gate.clone();
        service_fn(move |request| {
            let gate = gate.clone();
            let channel = channel.clone();
            async move {
                gate.acquire().await.unwrap().forget();
                channel.oneshot(request).await
            }
        })
    };
    let mut late = EchoClient::new(ServiceBuilder::new().layer(auth.clone()).service(held));

    assert_eq!(say(&mut client, "warm").await.unwrap(), "warm");
    api.revoke("tok-1");

    let late_call = tokio::spawn(async move { late.say(msg("late", 0)).await });
    // Let it get its token (tok-1) and reach the gate.
    tokio::time::sleep(Duration::from_millis(20)).await;

    // Another call is refused with tok-1 and refreshes: tok-2.
    assert_eq!(say(&mut client, "now").await.unwrap(), "now");
    assert_eq!(source.fetches(), 2);
    assert_eq!(auth.stats().retries, 1);

    // The late call goes out with tok-1, is refused, and is resent with tok-2 (through the gate
    // once more).
    gate.add_permits(2);
    let late_reply = late_call.await.unwrap().unwrap().into_inner();
    assert_eq!(late_reply.text, "late");
    assert_eq!(source.fetches(), 2, "a stale refusal fetches nothing");
    assert_eq!(auth.stats().retries, 2);
    assert_eq!(
        auth.stats().unauthorized,
        1,
        "only tok-1's first refusal forgot it"
    );
    assert_eq!(api.seen(), ["tok-1", "tok-1", "tok-2", "tok-1", "tok-2"]);
    assert_eq!(api.unauthorized(), 2);
    server.shutdown().await.unwrap();
}

/// A stream that ends with UNAUTHENTICATED in its trailers, after its messages (the token
/// expired or was revoked mid-stream): the caller gets the messages and the status (the call is
/// not resent, its messages are already out), and the layer drops the rejected token, so the
/// next call carries a new one.
#[tokio::test]
async fn unauthenticated_in_the_trailers_of_a_stream_drops_the_token() {
    let Setup {
        source,
        auth,
        server,
        mut client,
        ..
    } = setup(Duration::from_millis(1)).await;
    let api = source.api();

    let mut stream = client
        .count(msg(grpc_fixture::EXPIRE, 2))
        .await
        .unwrap()
        .into_inner();
    let mut texts = Vec::new();
    let status = loop {
        match stream.message().await {
            Ok(Some(item)) => texts.push(item.text),
            Ok(None) => panic!("the stream must end with UNAUTHENTICATED"),
            Err(status) => break status,
        }
    };
    assert_eq!(texts, ["expire 1", "expire 2"]);
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(auth.stats().unauthorized, 1, "the token was dropped");
    assert_eq!(auth.stats().retries, 0, "the stream was not resent");

    assert_eq!(say(&mut client, "next").await.unwrap(), "next");
    assert_eq!(api.seen(), ["tok-1", "tok-2"]);
    assert_eq!(source.fetches(), 2);
    server.shutdown().await.unwrap();
}

/// Token failures reach tonic callers as a `Status` that says what happened: `UNAVAILABLE`
/// while the token endpoint is down (a real endpoint answering 503 to every caller of 20),
/// `UNAUTHENTICATED` when it refuses the client. The `tower_bearer::Error` is the status's
/// source.
#[tokio::test]
async fn token_failures_reach_tonic_callers_as_unavailable_or_unauthenticated() {
    use http::StatusCode;
    use std::error::Error as _;
    use support::StandInEndpoint;
    use tower_bearer::ClientCredentials;

    let server = grpc_fixture::serve(|request: Request<()>| Ok(request))
        .await
        .unwrap();
    let channel = Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client_for = |endpoint: &StandInEndpoint| {
        let source = ClientCredentials::builder(endpoint.url("/token"))
            .client_id("svc")
            .client_secret("s3cret")
            .build()
            .unwrap();
        let auth = AuthLayer::builder(source)
            .channel_origin(server.url())
            .fetch_attempts(1)
            .build()
            .unwrap();
        EchoClient::new(ServiceBuilder::new().layer(auth).service(channel.clone()))
    };

    let down = StandInEndpoint::json(StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"down"}"#).await;
    let client = client_for(&down);
    let mut callers = tokio::task::JoinSet::new();
    for i in 0..20 {
        let mut client = client.clone();
        callers.spawn(async move { client.say(msg("hi", i)).await });
    }
    while let Some(result) = callers.join_next().await {
        let status = result.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let source = status.source().expect("the error is the status's source");
        let err = source.downcast_ref::<tower_bearer::Error>().unwrap();
        assert!(err.is_transient(), "{err}");
        assert!(!format!("{status:?}").contains("s3cret"));
    }

    let refused = StandInEndpoint::json(
        StatusCode::UNAUTHORIZED,
        r#"{"error":"invalid_client","error_description":"unknown client"}"#,
    )
    .await;
    let status = client_for(&refused).say(msg("hi", 0)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("invalid_client"),
        "{}",
        status.message()
    );

    // A channel whose origin was not stated: the layer cannot tell where the token would go.
    let unstated = EchoClient::new(
        ServiceBuilder::new()
            .layer(AuthLayer::new(tower_bearer::StaticToken::new("t")))
            .service(channel.clone()),
    );
    let status = { unstated }.say(msg("hi", 0)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("channel_origin"),
        "{}",
        status.message()
    );
    server.shutdown().await.unwrap();
}

#[cfg(feature = "jose")]
#[path = "support/static_dpop.rs"]
mod static_dpop;

/// A DPoP-bound token over a tonic channel: every call carries `authorization: DPoP <token>`
/// and a proof of its own whose `htu` is the channel origin the layer was given plus the
/// method's path (the request itself names only the path) and whose `htm` is `POST`.
#[cfg(feature = "jose")]
#[tokio::test]
async fn a_dpop_bound_token_goes_over_a_channel_with_a_proof_for_its_origin() {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    use std::sync::Mutex;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = {
        let seen = Arc::clone(&seen);
        move |request: Request<()>| {
            let value = |name: &str| {
                request
                    .metadata()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            seen.lock()
                .unwrap()
                .push((value("authorization"), value("dpop")));
            Ok(request)
        }
    };
    let server = grpc_fixture::serve(record).await.unwrap();
    let channel = Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let auth = AuthLayer::builder(static_dpop::StaticDpop {
        key: tower_bearer::jose::SigningKey::generate_es256().unwrap(),
        token: "grpc-dpop-token".to_owned(),
    })
    .channel_origin(server.url())
    .build()
    .unwrap();
    let mut client = EchoClient::new(ServiceBuilder::new().layer(auth).service(channel));
    for text in ["one", "two"] {
        assert_eq!(say(&mut client, text).await.unwrap(), text);
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0].1, seen[1].1, "a proof per call");
    for (authorization, proof) in seen {
        assert_eq!(authorization, "DPoP grpc-dpop-token");
        let claims = proof.split('.').nth(1).expect("a compact JWS");
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        assert_eq!(claims["htm"], "POST");
        assert_eq!(claims["htu"], format!("{}/echo.Echo/Say", server.url()));
    }
    server.shutdown().await.unwrap();
}
