//! The token source and the one [`AuthLayer`] every request of a run goes through.

use http::Uri;
use tower_bearer::{
    AuthLayer, AuthLayerBuilder, ClientAuth, ClientCredentials, RefreshTokenGrant, StaticToken,
    jose::SigningKey, store::FileStore,
};

use crate::{
    Error,
    cli::{Args, AuthMethod, SECRET_VAR, TOKEN_VAR},
    demo::Demo,
};

/// Where tokens come from, as the summary names it (no secret in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// `client_credentials` at the demo's or `--token-url`'s endpoint.
    ClientCredentials,
    /// `client_credentials` with a signed client assertion (`--client-key`).
    PrivateKeyJwt,
    /// `refresh_token` over a `FileStore` (`--refresh-store`).
    RefreshToken,
    /// A static token from the environment.
    Static,
}

impl SourceKind {
    /// What the flags ask for.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] when no token source is given.
    pub fn of(args: &Args) -> Result<SourceKind, Error> {
        Ok(if args.is_demo() {
            SourceKind::ClientCredentials
        } else if args.refresh_store.is_some() {
            SourceKind::RefreshToken
        } else if args.client_key.is_some() {
            SourceKind::PrivateKeyJwt
        } else if args.token_url.is_some() {
            SourceKind::ClientCredentials
        } else if std::env::var_os(TOKEN_VAR).is_some() {
            SourceKind::Static
        } else {
            return Err(Error::Usage(format!(
                "no token source: give --token-url and --client-id (secret in {SECRET_VAR}), \
                 or set {TOKEN_VAR}"
            )));
        })
    }

    /// The name the report uses.
    pub fn name(&self) -> &'static str {
        match self {
            SourceKind::ClientCredentials => "client_credentials",
            SourceKind::PrivateKeyJwt => "client_credentials (private_key_jwt)",
            SourceKind::RefreshToken => "refresh_token",
            SourceKind::Static => "static token",
        }
    }
}

/// Applies the settings both grant builders share (their setters are the same methods).
macro_rules! configure {
    ($builder:expr, $args:expr, $client_id:expr, $secret:expr, $key:expr) => {{
        let mut builder = $builder.client_id($client_id).allow_http($args.allow_http);
        match ($key, $secret) {
            (Some(key), _) => builder = builder.private_key_jwt(key),
            (None, Some(secret)) => {
                builder = builder.client_secret(secret).auth(match $args.auth {
                    AuthMethod::Basic => ClientAuth::Basic,
                    AuthMethod::Post => ClientAuth::Post,
                    AuthMethod::Query => ClientAuth::Query,
                })
            }
            (None, None) => builder = builder.auth(ClientAuth::None),
        }
        if let Some(scope) = &$args.scope {
            builder = builder.scope(scope);
        }
        for (name, value) in &$args.params {
            builder = builder.param(name, value);
        }
        if $args.dpop {
            builder = builder.dpop(SigningKey::generate_es256()?);
        }
        builder
    }};
}

/// The layer for this run: its token source from the flags (or the demo's endpoint), limited
/// to the origins of `urls` (gRPC: that channel's origin).
///
/// # Errors
///
/// No token source, a missing client id or secret, an unreadable `--client-key`, or settings
/// tower-bearer refuses ([`Error::Source`]).
pub fn layer(args: &Args, demo: Option<&Demo>, urls: &[Uri]) -> Result<AuthLayer, Error> {
    let builder = source(args, demo)?;
    let mut builder = builder.allow_http(args.allow_http);
    for url in urls {
        let origin = origin(url)?;
        builder = if args.grpc {
            builder.channel_origin(origin)
        } else {
            builder.origin(origin)
        };
        if args.grpc {
            break; // one channel, to the first URL
        }
    }
    Ok(builder.build()?)
}

/// `scheme://authority` of a URL.
fn origin(url: &Uri) -> Result<String, Error> {
    match (url.scheme_str(), url.authority()) {
        (Some(scheme), Some(authority)) => Ok(format!("{scheme}://{authority}")),
        _ => Err(Error::Usage(format!(
            "--url {url}: give an absolute http:// or https:// URL"
        ))),
    }
}

/// A layer builder around the token source the flags name.
fn source(args: &Args, demo: Option<&Demo>) -> Result<AuthLayerBuilder, Error> {
    if let Some(demo) = demo {
        let builder = ClientCredentials::builder(demo.token_url());
        let source = configure!(
            builder,
            args,
            demo.client_id(),
            Some(demo.client_secret()),
            None::<SigningKey>
        )
        .build()?;
        return Ok(AuthLayer::builder(source));
    }
    let kind = SourceKind::of(args)?;
    if kind == SourceKind::Static {
        let token = std::env::var(TOKEN_VAR)
            .map_err(|_| Error::Usage(format!("{TOKEN_VAR} is not valid UTF-8")))?;
        return Ok(AuthLayer::builder(StaticToken::new(token)));
    }
    let token_url = args.token_url.clone().unwrap_or_default();
    let client_id = args
        .client_id
        .clone()
        .ok_or_else(|| Error::Usage("--token-url needs --client-id".into()))?;
    let key = match &args.client_key {
        Some(path) => {
            let pem = std::fs::read_to_string(path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            let key = SigningKey::from_pkcs8_pem(&pem)?;
            Some(match &args.key_id {
                Some(kid) => key.with_key_id(kid),
                None => key,
            })
        }
        None => None,
    };
    let secret = std::env::var(SECRET_VAR).ok().filter(|s| !s.is_empty());
    if let Some(store) = &args.refresh_store {
        // A public client (no secret, no key) authenticates with its id alone.
        let builder = RefreshTokenGrant::builder(token_url).store(FileStore::new(store));
        let source = configure!(builder, args, client_id, secret, key).build()?;
        return Ok(AuthLayer::builder(source));
    }
    if key.is_none() && secret.is_none() {
        return Err(Error::Usage(format!(
            "set {SECRET_VAR} to the client secret, or give --client-key for private_key_jwt"
        )));
    }
    let builder = ClientCredentials::builder(token_url);
    let source = configure!(builder, args, client_id, secret, key).build()?;
    Ok(AuthLayer::builder(source))
}
