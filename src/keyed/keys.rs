//! Key functions for the common cases: a token per host, per value of a header, per incoming
//! bearer credential.

use http::HeaderName;

use super::RequestInfo;
use crate::SubjectToken;

/// A token per host the request goes to (an audience per API): the key is the host, as written
/// in the URL. Requests addressed by path alone (a tonic channel's) have none.
pub fn by_host() -> impl Fn(&RequestInfo<'_>) -> Option<String> + Send + Sync + 'static {
    |request| request.host().map(str::to_owned)
}

/// A token per value of the header `name` (a tenant id, say). A request without the header, or
/// with it twice, or with a value that is not visible ASCII, has no key.
pub fn by_header(
    name: HeaderName,
) -> impl Fn(&RequestInfo<'_>) -> Option<String> + Send + Sync + 'static {
    move |request| request.header(&name).map(str::to_owned)
}

/// A token per incoming bearer credential: the key is the token of the request's
/// `Authorization: Bearer <token>` (the scheme in any case), for a gateway that forwards its
/// caller's request and exchanges the caller's token ([`TokenExchange`](crate::TokenExchange))
/// for one of its own. The layer then replaces that header with the key's token, so the
/// caller's token does not go downstream (unless the layer sends its token in another header).
pub fn by_bearer_credential()
-> impl Fn(&RequestInfo<'_>) -> Option<SubjectToken> + Send + Sync + 'static {
    |request| {
        let value = request.header(http::header::AUTHORIZATION)?;
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty())
            .then(|| SubjectToken::new(token))
    }
}
