//! Assertions from a platform's endpoint: [`GithubActions`] and [`GcpIdentity`].

use std::{fmt, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use url::Url;
use zeroize::Zeroizing;

use super::{Assertion, AssertionSource};
use crate::{Error, oauth::TokenEndpoint};

/// How long a platform endpoint has to answer.
pub(crate) const PLATFORM_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest answer read.
pub(crate) const MAX_ANSWER: usize = 64 * 1024;

/// The OIDC token of a GitHub Actions job (a workflow with `permissions: id-token: write`),
/// asked for with an audience, as GitHub documents ("Configuring OpenID Connect in cloud
/// providers"): `GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=...` with
/// `Authorization: Bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN`, answered `{"value": "<jwt>"}`.
///
/// ```no_run
/// use tower_bearer::assertion::GithubActions;
///
/// # fn main() -> Result<(), tower_bearer::Error> {
/// let source = GithubActions::from_env()?.audience("api://AzureADTokenExchange");
/// # let _ = source;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct GithubActions {
    request_url: Url,
    request_token: SecretString,
    audience: Option<String>,
    http: Option<reqwest::Client>,
}

impl GithubActions {
    /// The job's endpoint and its bearer token, from `ACTIONS_ID_TOKEN_REQUEST_URL` and
    /// `ACTIONS_ID_TOKEN_REQUEST_TOKEN`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if either is not set (the workflow lacks `id-token: write`), or the
    /// URL is not one.
    pub fn from_env() -> Result<GithubActions, Error> {
        let variable = |name: &str| {
            std::env::var(name).ok().filter(|v| !v.is_empty()).ok_or_else(|| {
                Error::config(format!(
                    "{name} is not set: is this a GitHub Actions job with `permissions: id-token: write`?"
                ))
            })
        };
        GithubActions::new(
            &variable("ACTIONS_ID_TOKEN_REQUEST_URL")?,
            variable("ACTIONS_ID_TOKEN_REQUEST_TOKEN")?,
        )
    }

    /// The endpoint `request_url` and its bearer token `request_token`, given by hand.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `request_url` is not an http or https URL.
    pub fn new(
        request_url: &str,
        request_token: impl Into<String>,
    ) -> Result<GithubActions, Error> {
        Ok(GithubActions {
            request_url: platform_url(request_url)?,
            request_token: SecretString::from(request_token.into()),
            audience: None,
            http: None,
        })
    }

    /// The audience the token is for (its `aud`); GitHub's default (the repository owner's
    /// URL) when not set.
    #[must_use]
    pub fn audience(mut self, audience: impl Into<String>) -> GithubActions {
        self.audience = Some(audience.into());
        self
    }

    /// The HTTP client; one without redirects and with a timeout by default.
    #[must_use]
    pub fn http_client(mut self, client: reqwest::Client) -> GithubActions {
        self.http = Some(client);
        self
    }
}

impl AssertionSource for GithubActions {
    async fn assertion(&self) -> Result<Assertion, Error> {
        let mut url = self.request_url.clone();
        if let Some(audience) = &self.audience {
            url.query_pairs_mut().append_pair("audience", audience);
        }
        let request = client(self.http.as_ref())?
            .get(url)
            .bearer_auth(self.request_token.expose_secret())
            .header(http::header::ACCEPT, "application/json");
        let body = answer(request, "GitHub Actions' OIDC endpoint").await?;
        #[derive(serde::Deserialize)]
        struct Answer {
            value: String,
        }
        let answer: Answer = serde_json::from_slice(&body).map_err(|_| {
            Error::Assertion("GitHub Actions' OIDC endpoint answered no `value`".into())
        })?;
        let value = Zeroizing::new(answer.value);
        Ok(Assertion::new(value.as_str()))
    }
}

impl fmt::Debug for GithubActions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubActions")
            .field(
                "request_url",
                &self.request_url.origin().ascii_serialization(),
            )
            .field("request_token", &"[redacted]")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// The default metadata server of a Google Cloud workload.
const GCE_METADATA_HOST: &str = "metadata.google.internal";

/// An identity token of a Google Cloud workload (Compute Engine, GKE with workload identity,
/// Cloud Run), from its metadata server, as Google documents ("Get an ID token: metadata
/// server"): `GET http://$GCE_METADATA_HOST/computeMetadata/v1/instance/service-accounts/default/identity?audience=...&format=full`
/// with `Metadata-Flavor: Google`, answered with the JWT itself. The answer must carry
/// `Metadata-Flavor: Google` too, or it is refused: anything else on that address is not the
/// metadata server.
///
/// The host is `GCE_METADATA_HOST` if set (as Google's libraries read it), else
/// `metadata.google.internal`; [`metadata_host`](Self::metadata_host) overrides both.
///
/// ```
/// use tower_bearer::assertion::GcpIdentity;
///
/// let source = GcpIdentity::new("https://login.example.com");
/// # let _ = source;
/// ```
#[derive(Debug, Clone)]
pub struct GcpIdentity {
    audience: String,
    host: Option<String>,
    http: Option<reqwest::Client>,
}

impl GcpIdentity {
    /// An identity token for `audience`.
    pub fn new(audience: impl Into<String>) -> GcpIdentity {
        GcpIdentity {
            audience: audience.into(),
            host: None,
            http: None,
        }
    }

    /// The metadata server's `host[:port]`, instead of `GCE_METADATA_HOST` or the default.
    #[must_use]
    pub fn metadata_host(mut self, host: impl Into<String>) -> GcpIdentity {
        self.host = Some(host.into());
        self
    }

    /// The HTTP client; by default one that uses no proxy and follows no redirects.
    #[must_use]
    pub fn http_client(mut self, client: reqwest::Client) -> GcpIdentity {
        self.http = Some(client);
        self
    }

    fn url(&self) -> Result<Url, Error> {
        let host = gcp_metadata_host(self.host.as_deref());
        let mut url = platform_url(&format!(
            "http://{host}/computeMetadata/v1/instance/service-accounts/default/identity"
        ))?;
        url.query_pairs_mut()
            .append_pair("audience", &self.audience)
            .append_pair("format", "full");
        Ok(url)
    }
}

impl AssertionSource for GcpIdentity {
    async fn assertion(&self) -> Result<Assertion, Error> {
        let http = match &self.http {
            Some(http) => http.clone(),
            None => local_client()?,
        };
        let request = http.get(self.url()?).header("Metadata-Flavor", "Google");
        let response = request
            .timeout(PLATFORM_TIMEOUT)
            .send()
            .await
            .map_err(|e| {
                Error::Assertion(format!("the metadata server: {}", without_url(&e)).into())
            })?;
        if response
            .headers()
            .get("metadata-flavor")
            .and_then(|v| v.to_str().ok())
            != Some("Google")
        {
            return Err(Error::Assertion(
                "the metadata server's answer lacks `Metadata-Flavor: Google`".into(),
            ));
        }
        let body = checked(response, "the metadata server").await?;
        let text = std::str::from_utf8(&body).map_err(|_| {
            Error::Assertion("the metadata server answered something that is not text".into())
        })?;
        Ok(Assertion::new(text.trim()))
    }
}

/// The GCP metadata server's `host[:port]`: `explicit` if given, else `GCE_METADATA_HOST` (as
/// Google's libraries read it), else `metadata.google.internal`.
pub(crate) fn gcp_metadata_host(explicit: Option<&str>) -> String {
    match explicit {
        Some(host) => host.to_owned(),
        None => std::env::var("GCE_METADATA_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| GCE_METADATA_HOST.to_owned()),
    }
}

/// A client for a platform's local endpoint (a metadata server): no proxy, which a metadata
/// address must not go through, and no redirects.
pub(crate) fn local_client() -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|_| Error::config("cannot build the HTTP client for the platform's endpoint"))
}

/// `url`, if it is an http or https URL.
fn platform_url(url: &str) -> Result<Url, Error> {
    match Url::parse(url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(url),
        _ => Err(Error::config(
            "a platform endpoint must be an http or https URL",
        )),
    }
}

fn client(http: Option<&reqwest::Client>) -> Result<reqwest::Client, Error> {
    match http {
        Some(http) => Ok(http.clone()),
        None => TokenEndpoint::default_http_client(),
    }
}

/// Sends `request` to `what` and reads its successful answer.
async fn answer(request: reqwest::RequestBuilder, what: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
    let response = request
        .timeout(PLATFORM_TIMEOUT)
        .send()
        .await
        .map_err(|e| Error::Assertion(format!("{what}: {}", without_url(&e)).into()))?;
    checked(response, what).await
}

/// The body of a successful answer of `what`, read by the token endpoint's capped reader (at
/// most [`MAX_ANSWER`] bytes, zeroized when dropped); its status otherwise (never its body,
/// which could echo a credential).
async fn checked(response: reqwest::Response, what: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
    let status = response.status();
    if !status.is_success() {
        return Err(Error::Assertion(format!("{what} answered {status}").into()));
    }
    crate::oauth::read_capped(response, MAX_ANSWER)
        .await
        .map_err(|err| match err {
            Error::Transport(_) => Error::Assertion(format!("{what}: the answer broke off").into()),
            _ => Error::Assertion(format!("{what} answered more than 64 KiB").into()),
        })
}

/// A transport error without its URL, whose query may hold an audience or a token.
fn without_url(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "no answer in time"
    } else if err.is_connect() {
        "cannot connect"
    } else {
        "the request failed"
    };
    kind.to_owned()
}
