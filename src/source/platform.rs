//! Token sources where the platform itself issues the access token: a Google Cloud metadata
//! server ([`GcpMetadataToken`]) and Azure managed identity ([`AzureManagedIdentity`]).

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::StatusCode;
use url::Url;
use zeroize::Zeroizing;

use crate::{
    Error, Token, TokenSource,
    assertion::{MAX_ANSWER, PLATFORM_TIMEOUT, gcp_metadata_host, local_client},
    error::TransportError,
};

/// Azure's instance metadata service (IMDS), on the link-local address it documents.
const AZURE_IMDS: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

/// An access token of a Google Cloud workload's service account, from its metadata server, as
/// Google documents it ("Authenticate workloads using service accounts: metadata server"):
/// `GET http://$GCE_METADATA_HOST/computeMetadata/v1/instance/service-accounts/default/token`
/// (with `?scopes=` when scopes are set) and `Metadata-Flavor: Google`, answered with
/// `access_token`, `expires_in` and `token_type`. An answer without `Metadata-Flavor: Google`
/// is refused: anything else on that address is not the metadata server.
///
/// ```
/// use tower_bearer::{AuthLayer, source::GcpMetadataToken};
///
/// let layer = AuthLayer::new(GcpMetadataToken::new().scopes(["https://www.googleapis.com/auth/cloud-platform"]));
/// # let _ = layer;
/// ```
#[derive(Clone, Default)]
pub struct GcpMetadataToken {
    account: Option<String>,
    scopes: Vec<String>,
    host: Option<String>,
}

impl GcpMetadataToken {
    /// The default service account's token.
    pub fn new() -> GcpMetadataToken {
        GcpMetadataToken::default()
    }

    /// Another service account of the instance, by email.
    #[must_use]
    pub fn account(mut self, email: impl Into<String>) -> GcpMetadataToken {
        self.account = Some(email.into());
        self
    }

    /// The OAuth scopes to ask for; the instance's own unless set.
    #[must_use]
    pub fn scopes(
        mut self,
        scopes: impl IntoIterator<Item = impl Into<String>>,
    ) -> GcpMetadataToken {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// The metadata server's `host[:port]`, instead of `GCE_METADATA_HOST` or
    /// `metadata.google.internal`.
    #[must_use]
    pub fn metadata_host(mut self, host: impl Into<String>) -> GcpMetadataToken {
        self.host = Some(host.into());
        self
    }

    fn url(&self) -> Result<Url, Error> {
        let host = gcp_metadata_host(self.host.as_deref());
        let account = self.account.as_deref().unwrap_or("default");
        let mut url = Url::parse(&format!(
            "http://{host}/computeMetadata/v1/instance/service-accounts/"
        ))
        .and_then(|base| base.join(&format!("{account}/token")))
        .map_err(|_| Error::config("the metadata server's host and account make no URL"))?;
        if !self.scopes.is_empty() {
            url.query_pairs_mut()
                .append_pair("scopes", &self.scopes.join(","));
        }
        Ok(url)
    }
}

impl TokenSource for GcpMetadataToken {
    async fn fetch(&self) -> Result<Token, Error> {
        let response = local_client()?
            .get(self.url()?)
            .header("Metadata-Flavor", "Google")
            .timeout(PLATFORM_TIMEOUT)
            .send()
            .await
            .map_err(transport)?;
        if response
            .headers()
            .get("metadata-flavor")
            .and_then(|v| v.to_str().ok())
            != Some("Google")
        {
            return Err(Error::UnexpectedResponse {
                status: response.status(),
                reason: "the metadata server's answer lacks `Metadata-Flavor: Google`".into(),
                excerpt: None,
                retry_after: None,
            });
        }
        token(response, "the metadata server").await
    }

    fn identity(&self) -> Option<String> {
        Some(format!(
            "gcp-metadata account={:?} scopes={:?}",
            self.account.as_deref().unwrap_or("default"),
            self.scopes
        ))
    }
}

impl fmt::Debug for GcpMetadataToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpMetadataToken")
            .field("account", &self.account)
            .field("scopes", &self.scopes)
            .field("host", &self.host)
            .finish()
    }
}

/// An access token from Azure managed identity, for a `resource` (the API's application ID
/// URI, `https://management.azure.com/` say), as Microsoft documents it ("How to use managed
/// identities for Azure resources on an Azure VM to acquire an access token", and "... for App
/// Service and Azure Functions"):
///
/// - on App Service, Functions and Container Apps (`IDENTITY_ENDPOINT` and `IDENTITY_HEADER`
///   set): `GET $IDENTITY_ENDPOINT?resource=...&api-version=2019-08-01` with
///   `X-IDENTITY-HEADER`, answered with `expires_on` (seconds since the epoch, a string);
/// - elsewhere, the instance metadata service: `GET
///   http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=...`
///   with `Metadata: true`, answered with `expires_in` as a string.
///
/// A user-assigned identity is named by [`client_id`](Self::client_id). As Microsoft advises,
/// the metadata service's 404 (updating), 410 (upgrading), 429 and 5xx answers are retried
/// within the fetch, with the layer's backoff.
///
/// ```
/// use tower_bearer::{AuthLayer, source::AzureManagedIdentity};
///
/// let layer = AuthLayer::new(AzureManagedIdentity::new("https://management.azure.com/"));
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct AzureManagedIdentity {
    resource: String,
    client_id: Option<String>,
    endpoint: Option<AzureEndpoint>,
}

/// Where Azure's tokens come from.
#[derive(Clone)]
enum AzureEndpoint {
    /// The instance metadata service at this URL.
    Imds(String),
    /// App Service's local endpoint, and the header value it wants.
    AppService {
        url: String,
        header: Zeroizing<String>,
    },
}

impl AzureManagedIdentity {
    /// A token for `resource`, from App Service's endpoint when `IDENTITY_ENDPOINT` and
    /// `IDENTITY_HEADER` are set, else from the instance metadata service.
    pub fn new(resource: impl Into<String>) -> AzureManagedIdentity {
        AzureManagedIdentity {
            resource: resource.into(),
            client_id: None,
            endpoint: None,
        }
    }

    /// A user-assigned identity, by its client id.
    #[must_use]
    pub fn client_id(mut self, id: impl Into<String>) -> AzureManagedIdentity {
        self.client_id = Some(id.into());
        self
    }

    /// The instance metadata service's token URL, instead of
    /// `http://169.254.169.254/metadata/identity/oauth2/token` (and instead of App Service's
    /// endpoint).
    #[must_use]
    pub fn imds_endpoint(mut self, url: impl Into<String>) -> AzureManagedIdentity {
        self.endpoint = Some(AzureEndpoint::Imds(url.into()));
        self
    }

    /// App Service's endpoint and header value, instead of `IDENTITY_ENDPOINT` and
    /// `IDENTITY_HEADER`.
    #[must_use]
    pub fn app_service_endpoint(
        mut self,
        url: impl Into<String>,
        header: impl Into<String>,
    ) -> AzureManagedIdentity {
        self.endpoint = Some(AzureEndpoint::AppService {
            url: url.into(),
            header: Zeroizing::new(header.into()),
        });
        self
    }

    fn endpoint(&self) -> AzureEndpoint {
        if let Some(endpoint) = &self.endpoint {
            return endpoint.clone();
        }
        let variable = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        match (variable("IDENTITY_ENDPOINT"), variable("IDENTITY_HEADER")) {
            (Some(url), Some(header)) => AzureEndpoint::AppService {
                url,
                header: Zeroizing::new(header),
            },
            _ => AzureEndpoint::Imds(AZURE_IMDS.to_owned()),
        }
    }
}

impl TokenSource for AzureManagedIdentity {
    async fn fetch(&self) -> Result<Token, Error> {
        let endpoint = self.endpoint();
        let (url, api_version) = match &endpoint {
            AzureEndpoint::Imds(url) => (url, "2018-02-01"),
            AzureEndpoint::AppService { url, .. } => (url, "2019-08-01"),
        };
        let mut url = Url::parse(url)
            .map_err(|_| Error::config("the managed identity endpoint is not a URL"))?;
        url.query_pairs_mut()
            .append_pair("api-version", api_version)
            .append_pair("resource", &self.resource);
        if let Some(id) = &self.client_id {
            url.query_pairs_mut().append_pair("client_id", id);
        }
        let request = local_client()?.get(url).timeout(PLATFORM_TIMEOUT);
        let request = match &endpoint {
            AzureEndpoint::Imds(_) => request.header("Metadata", "true"),
            AzureEndpoint::AppService { header, .. } => {
                request.header("X-IDENTITY-HEADER", header.as_str())
            }
        };
        let response = request.send().await.map_err(transport)?;
        token(response, "the managed identity endpoint").await
    }

    /// Microsoft's advice for the metadata service: 404 and 410 while it updates, and 429 and
    /// 5xx, are retried.
    fn retry_within_fetch(&self, error: &Error) -> bool {
        match error {
            Error::UnexpectedResponse { status, .. } => {
                matches!(*status, StatusCode::NOT_FOUND | StatusCode::GONE) || error.is_transient()
            }
            _ => error.is_transient(),
        }
    }

    fn identity(&self) -> Option<String> {
        Some(format!(
            "azure-managed-identity resource={:?} client_id={:?}",
            self.resource, self.client_id
        ))
    }
}

impl fmt::Debug for AzureManagedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let endpoint = match &self.endpoint {
            None => "from the environment",
            Some(AzureEndpoint::Imds(_)) => "instance metadata service",
            Some(AzureEndpoint::AppService { .. }) => "App Service",
        };
        f.debug_struct("AzureManagedIdentity")
            .field("resource", &self.resource)
            .field("client_id", &self.client_id)
            .field("endpoint", &endpoint)
            .finish()
    }
}

/// A transport error, without the URL (whose query may name an identity).
fn transport(err: reqwest::Error) -> Error {
    Error::Transport(TransportError::new(err))
}

/// The token in a platform endpoint's answer: `access_token`, its type, and its life from
/// `expires_in` (a number, or a string as Azure sends it) or `expires_on` (seconds since the
/// epoch). A failure names the status only: the body may hold a token.
async fn token(response: reqwest::Response, what: &str) -> Result<Token, Error> {
    let status = response.status();
    if !status.is_success() {
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::oauth::parse_retry_after);
        return Err(Error::UnexpectedResponse {
            status,
            reason: format!("{what} refused the token request").into(),
            excerpt: None,
            retry_after,
        });
    }
    let body = crate::oauth::read_capped(response, MAX_ANSWER).await?;
    answer_token(status, &body, what)
}

/// [`token`]'s reading of a successful answer's body.
fn answer_token(status: StatusCode, body: &[u8], what: &str) -> Result<Token, Error> {
    let unexpected = |reason: &str| Error::UnexpectedResponse {
        status,
        reason: format!("{what}: {reason}").into(),
        excerpt: None,
        retry_after: None,
    };
    if body.len() > MAX_ANSWER {
        return Err(unexpected("an answer over 64 KiB"));
    }
    let answer: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| unexpected("an answer that is not JSON"))?;
    let access_token = answer
        .get("access_token")
        .and_then(|v| v.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unexpected("no access_token"))?;
    let seconds = |name: &str| match answer.get(name)? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    let mut token = Token::new(access_token);
    if let Some(token_type) = answer.get("token_type").and_then(|v| v.as_str()) {
        token = token.with_token_type(token_type);
    }
    if let Some(lifetime) = seconds("expires_in") {
        token = token.with_expires_in(Duration::from_secs(lifetime));
    } else if let Some(at) = seconds("expires_on") {
        let left = UNIX_EPOCH
            .checked_add(Duration::from_secs(at))
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        token = token.with_expires_in(left);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_comes_as_a_number_a_string_or_an_instant() {
        let read = |body: &str| answer_token(StatusCode::OK, body.as_bytes(), "test").unwrap();
        let left = |token: Token| token.expires_in().unwrap().as_secs();
        assert!((3590..=3600).contains(&left(read(r#"{"access_token":"t","expires_in":3600}"#))));
        assert!(
            (3590..=3600).contains(&left(read(r#"{"access_token":"t","expires_in":" 3600 "}"#)))
        );
        let on = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let token = read(&format!(r#"{{"access_token":"t","expires_on":"{on}"}}"#));
        assert!((590..=600).contains(&left(token)));
        assert_eq!(
            read(r#"{"access_token":"t","expires_on":"1"}"#).expires_in(),
            Some(Duration::ZERO)
        );
        assert_eq!(
            read(r#"{"access_token":"t","expires_in":"soon"}"#).expires_in(),
            None
        );
        for bad in [
            r#"{"expires_in":1}"#,
            r#"{"access_token":""}"#,
            "[]",
            "not json",
        ] {
            let err = answer_token(StatusCode::OK, bad.as_bytes(), "test").unwrap_err();
            assert!(
                matches!(err, Error::UnexpectedResponse { .. }),
                "{bad}: {err:?}"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1_000))]

        /// Arbitrary bodies never panic.
        #[test]
        fn arbitrary_answers_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..2_048)) {
            let _ = answer_token(StatusCode::OK, &body, "test");
        }

        /// Token answers with any expiry values read or fail cleanly, never overflow.
        #[test]
        fn any_expiry_values_are_read_or_refused(
            expires_in in proptest::option::of("[0-9a-z .-]{0,24}"),
            expires_on in proptest::option::of(proptest::num::u64::ANY),
        ) {
            let mut body = String::from(r#"{"access_token":"t""#);
            if let Some(value) = expires_in {
                body.push_str(&format!(r#","expires_in":"{value}""#));
            }
            if let Some(value) = expires_on {
                body.push_str(&format!(r#","expires_on":{value}"#));
            }
            body.push('}');
            proptest::prop_assert!(answer_token(StatusCode::OK, body.as_bytes(), "test").is_ok());
        }
    }
}
