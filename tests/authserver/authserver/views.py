"""Views of the TEST-ONLY authorization server.

Everything under /o/ is django-oauth-toolkit's own code. This module adds:

* ``DiscoveryView`` - DOT's OIDC discovery document plus ``revocation_endpoint``
  and ``introspection_endpoint`` (DOT's OIDC view omits them; its RFC 8414 view
  has them).
* TEST-ONLY helpers, which a real authorization server would not have:
  ``whoami`` (a protected resource answering 401 + WWW-Authenticate),
  ``test_code`` (issues an authorization code without a browser) and
  ``test_revoke_all`` (server-side revocation of every token of a client).
"""
import json
import logging
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from oauthlib.common import generate_token
from oauth2_provider.models import (
    get_access_token_model,
    get_application_model,
    get_grant_model,
    get_refresh_token_model,
)
from oauth2_provider.oauth2_backends import get_oauthlib_core
from oauth2_provider.settings import oauth2_settings
from oauth2_provider.views import ConnectDiscoveryInfoView

log = logging.getLogger("authserver")

TEST_USER = "alice"


class DiscoveryView(ConnectDiscoveryInfoView):
    """OIDC discovery (DOT's) with the RFC 7009 / RFC 7662 endpoints added."""

    def get(self, request, *args, **kwargs):
        response = super().get(request, *args, **kwargs)
        data = json.loads(response.content)
        methods = list(oauth2_settings.OIDC_TOKEN_ENDPOINT_AUTH_METHODS_SUPPORTED)
        data["revocation_endpoint"] = self._get_endpoint_url(request, "revoke-token", required=True)
        data["revocation_endpoint_auth_methods_supported"] = methods
        data["introspection_endpoint"] = self._get_endpoint_url(request, "introspect", required=True)
        data["introspection_endpoint_auth_methods_supported"] = methods
        data["grant_types_supported"] = ["authorization_code", "password", "client_credentials", "refresh_token"]
        out = JsonResponse(data)
        out["Access-Control-Allow-Origin"] = "*"
        return out


def _unauthorized(description):
    response = JsonResponse({"error": "invalid_token", "error_description": description}, status=401)
    response["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return response


@require_GET
def whoami(request):
    """TEST-ONLY protected resource.

    200 {"client_id", "scope", "username"} for a valid, unexpired, unrevoked DOT
    access token in ``Authorization: Bearer``; otherwise 401 with
    ``WWW-Authenticate: Bearer error="invalid_token"``.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _unauthorized("missing bearer token")
    valid, oauth_request = get_oauthlib_core().verify_request(request, scopes=[])
    if not valid:
        return _unauthorized("the access token is invalid, expired or revoked")
    access_token = oauth_request.access_token
    return JsonResponse(
        {
            "client_id": access_token.application.client_id if access_token.application else None,
            "scope": access_token.scope,
            "username": access_token.user.get_username() if access_token.user else None,
        }
    )


@csrf_exempt
@require_POST
def test_code(request):
    """TEST-ONLY: create an authorization code for user alice, as /o/authorize/ would
    after the user consents. Form: client_id, redirect_uri, [scope],
    [code_challenge, code_challenge_method]. Answers {"code": "..."}.
    The code is then exchanged at /o/token/ by DOT's real code."""
    Application = get_application_model()
    Grant = get_grant_model()
    client_id = request.POST.get("client_id", "")
    redirect_uri = request.POST.get("redirect_uri", "")
    scope = request.POST.get("scope", "").strip() or " ".join(oauth2_settings._DEFAULT_SCOPES)
    code_challenge = request.POST.get("code_challenge", "")
    code_challenge_method = request.POST.get("code_challenge_method", "")

    app = Application.objects.filter(client_id=client_id).first()
    if app is None or not app.allows_grant_type(Application.GRANT_AUTHORIZATION_CODE):
        return JsonResponse({"error": "invalid_client"}, status=400)
    if not app.redirect_uri_allowed(redirect_uri):
        return JsonResponse({"error": "invalid_request", "error_description": "redirect_uri not registered"}, status=400)
    unknown = set(scope.split()) - set(oauth2_settings._SCOPES)
    if unknown:
        return JsonResponse({"error": "invalid_scope", "error_description": " ".join(sorted(unknown))}, status=400)
    if code_challenge and not code_challenge_method:
        code_challenge_method = "plain"  # RFC 7636 section 4.3 default
    if code_challenge_method not in ("", "plain", "S256") or (code_challenge_method and not code_challenge):
        return JsonResponse({"error": "invalid_request", "error_description": "bad PKCE parameters"}, status=400)

    user = get_user_model().objects.get(username=TEST_USER)
    code = generate_token()
    Grant.objects.create(
        application=app,
        user=user,
        code=code,
        expires=timezone.now() + timedelta(seconds=oauth2_settings.AUTHORIZATION_CODE_EXPIRE_SECONDS),
        redirect_uri=redirect_uri,
        scope=scope,
        code_challenge=code_challenge,
        code_challenge_method=code_challenge_method,
        nonce="",
        claims="{}",
    )
    return JsonResponse({"code": code})


@csrf_exempt
@require_POST
def test_revoke_all(request):
    """TEST-ONLY: revoke every access token and refresh token of form field
    ``client_id`` (simulates a server-side revocation). Answers 204."""
    Application = get_application_model()
    client_id = request.POST.get("client_id", "")
    app = Application.objects.filter(client_id=client_id).first()
    if app is None:
        return JsonResponse({"error": "invalid_client"}, status=400)
    refresh_tokens = list(get_refresh_token_model().objects.filter(application=app, revoked__isnull=True))
    for rt in refresh_tokens:
        rt.revoke()  # also deletes its access token
    deleted, _ = get_access_token_model().objects.filter(application=app).delete()
    log.info("revoke-all %s: %d refresh tokens revoked, %d access tokens deleted", client_id, len(refresh_tokens), deleted)
    return HttpResponse(status=204)
