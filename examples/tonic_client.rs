//! `AuthLayer` in front of a tonic `Channel`: a generated gRPC client takes the wrapped channel
//! unchanged, every call carries `authorization: Bearer <token>`, and a call whose token the
//! server revoked succeeds after one refresh and one resend. Needs no credentials and no network.
//!
//! It starts, on 127.0.0.1 (a random port), the `echo.Echo` gRPC server of
//! `tests/grpc-fixture` behind an interceptor that accepts only the tokens the in-process token
//! source issued and the server has not revoked, and answers `UNAUTHENTICATED` otherwise.
//! Tokens live 2 seconds. Then it
//!
//! 1. makes 50 concurrent unary calls on a cold cache (one token fetch for all of them),
//! 2. makes a server-streaming call,
//! 3. revokes the current token on the server and makes a unary call: the server refuses it,
//!    the layer fetches a new token and resends the call, and the caller sees only the answer,
//! 4. waits past the token's lifetime and calls again (a new token, no refusal),
//!
//! prints a summary, and exits non-zero if anything went differently.
//!
//! ```text
//! cargo run --example tonic_client --features tonic
//! ```

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use grpc_fixture::{EchoClient, Msg};
use tonic::{Request, Status, transport::Endpoint};
use tower::ServiceBuilder;
use tower_bearer::{AuthLayer, BoxError, Token, source::from_fn};

const TOKEN_LIFETIME: Duration = Duration::from_secs(2);
const CONCURRENT_CALLS: u64 = 50;

/// What the gRPC server knows: the tokens it accepts, and what it saw.
#[derive(Default)]
struct ServerState {
    valid: Mutex<HashSet<String>>,
    calls: AtomicU64,
    refused: AtomicU64,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let state = Arc::new(ServerState::default());

    // The token source: in production `ClientCredentials::builder(...)`; here a closure that
    // issues tok-1, tok-2, ... and tells the server about each.
    let issued = Arc::new(AtomicU64::new(0));
    let source = {
        let (state, issued) = (state.clone(), issued.clone());
        from_fn(move || {
            let (state, issued) = (state.clone(), issued.clone());
            async move {
                let token = format!("tok-{}", issued.fetch_add(1, Relaxed) + 1);
                state.valid.lock().unwrap().insert(token.clone());
                Ok(Token::new(token).with_expires_in(TOKEN_LIFETIME))
            }
        })
    };

    // The gRPC server, with an interceptor that checks the bearer token of every call.
    let interceptor = {
        let state = state.clone();
        move |request: Request<()>| {
            state.calls.fetch_add(1, Relaxed);
            let token = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default();
            if state.valid.lock().unwrap().contains(token) {
                Ok(request)
            } else {
                state.refused.fetch_add(1, Relaxed);
                Err(Status::unauthenticated("invalid bearer token"))
            }
        }
    };
    let server = grpc_fixture::serve(interceptor).await?;
    println!("Echo gRPC server on {}", server.url());

    // The client: a tonic Channel wrapped in AuthLayer, given to the generated client.
    let channel = Endpoint::from_shared(server.url())?.connect().await?;
    let auth = AuthLayer::builder(source)
        // A channel sends requests addressed by path alone: say where it connects, so the
        // layer can check the token goes over https (or to loopback, as here).
        .channel_origin(server.url())
        .expiry_margin(Duration::from_millis(200))
        .build()?;
    let client = EchoClient::new(ServiceBuilder::new().layer(auth.clone()).service(channel));

    let mut surprises = Vec::new();
    let mut expect = |ok: bool, what: String| {
        println!("  {} {what}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            surprises.push(what);
        }
    };

    // 1. Concurrent unary calls on a cold cache.
    println!("1. {CONCURRENT_CALLS} concurrent unary calls, no token cached yet");
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..CONCURRENT_CALLS {
        let mut client = client.clone();
        calls.spawn(async move {
            let text = format!("hello {i}");
            let reply = client.say(msg(&text, 0)).await?.into_inner();
            Ok::<_, Status>(reply.text == text)
        });
    }
    let mut answered = 0;
    while let Some(call) = calls.join_next().await {
        match call? {
            Ok(true) => answered += 1,
            Ok(false) => println!("  wrong answer"),
            Err(status) => println!("  call failed: {status}"),
        }
    }
    expect(
        answered == CONCURRENT_CALLS,
        format!("{answered}/{CONCURRENT_CALLS} answered"),
    );
    let stats = auth.stats();
    expect(
        stats.fetches == 1,
        format!("token fetches: {}", stats.fetches),
    );

    // 2. A server-streaming call.
    println!("2. a server-streaming call");
    let mut stream = client.clone().count(msg("tick", 3)).await?.into_inner();
    let mut ticks = Vec::new();
    while let Some(item) = stream.message().await? {
        ticks.push(item.text);
    }
    expect(
        ticks == ["tick 1", "tick 2", "tick 3"],
        format!("stream: {ticks:?}"),
    );

    // 3. The server revokes the token; the next call is refused once and resent.
    println!("3. the server revokes the current token");
    state.valid.lock().unwrap().clear();
    let (calls_before, refused_before) = (state.calls.load(Relaxed), state.refused.load(Relaxed));
    let reply = client.clone().say(msg("after revocation", 0)).await;
    let stats = auth.stats();
    expect(
        reply
            .as_ref()
            .is_ok_and(|r| r.get_ref().text == "after revocation"),
        format!(
            "the caller got {:?}",
            reply
                .as_ref()
                .map(|r| &r.get_ref().text)
                .map_err(Status::code)
        ),
    );
    let (calls, refused) = (
        state.calls.load(Relaxed) - calls_before,
        state.refused.load(Relaxed) - refused_before,
    );
    expect(
        calls == 2 && refused == 1,
        format!("the server saw the call {calls} times and refused it {refused} time(s)"),
    );
    expect(
        stats.fetches == 2 && stats.retries == 1,
        format!(
            "token fetches: {}, resends: {}",
            stats.fetches, stats.retries
        ),
    );

    // 4. Past the token's lifetime: the layer fetches a new token before sending the call.
    println!("4. {} s later", TOKEN_LIFETIME.as_secs());
    tokio::time::sleep(TOKEN_LIFETIME).await;
    let refused_before = state.refused.load(Relaxed);
    let reply = client.clone().say(msg("later", 0)).await;
    expect(
        reply.is_ok(),
        format!("the call answered: {}", reply.is_ok()),
    );
    let stats = auth.stats();
    expect(
        stats.fetches == 3 && state.refused.load(Relaxed) == refused_before,
        format!(
            "token fetches: {}, refused since step 3: {}",
            stats.fetches,
            state.refused.load(Relaxed) - refused_before
        ),
    );

    server.shutdown().await?;
    let stats = auth.stats();
    println!(
        "summary: {} gRPC calls reached the server, {} refused; {} token fetches, {} rejected \
         tokens forgotten, {} resends",
        state.calls.load(Relaxed),
        state.refused.load(Relaxed),
        stats.fetches,
        stats.unauthorized,
        stats.retries
    );
    if surprises.is_empty() {
        println!("all as expected");
        Ok(())
    } else {
        Err(format!("{} surprise(s): {}", surprises.len(), surprises.join("; ")).into())
    }
}

fn msg(text: &str, n: u32) -> Msg {
    Msg {
        text: text.to_owned(),
        n,
    }
}
