"""Access-token lifetime per client (TEST-ONLY server).

django-oauth-toolkit passes ``ACCESS_TOKEN_EXPIRE_SECONDS`` to oauthlib's
``BearerToken`` as ``expires_in``; oauthlib calls it with the oauthlib request
when it is callable. By then the client has been authenticated, so
``request.client`` is the DOT ``Application``.
"""

DEFAULT_EXPIRES_IN = 3600

# client_id -> access-token lifetime in seconds
EXPIRES_IN_BY_CLIENT = {
    "cc-short": 2,
}


def access_token_expires_in(request):
    client = getattr(request, "client", None)
    client_id = getattr(client, "client_id", None) or getattr(request, "client_id", None)
    return EXPIRES_IN_BY_CLIENT.get(client_id, DEFAULT_EXPIRES_IN)
