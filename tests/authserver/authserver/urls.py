from django.urls import include, path, re_path
from oauth2_provider.views import OAuthServerMetadataView

from authserver import faults, views

urlpatterns = [
    # OIDC discovery: DOT's document plus revocation/introspection endpoints.
    # Listed before the include so it wins over DOT's own route of the same path.
    re_path(r"^o/\.well-known/openid-configuration/?$", views.DiscoveryView.as_view()),
    # django-oauth-toolkit: /o/token/, /o/revoke_token/, /o/introspect/, /o/authorize/,
    # /o/.well-known/jwks.json, /o/.well-known/oauth-authorization-server, ...
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    # RFC 8414 metadata at the origin, for the issuer http://HOST/o
    path(".well-known/oauth-authorization-server/o", OAuthServerMetadataView.as_view()),
    # TEST-ONLY helpers (see views.py)
    path("api/whoami", views.whoami),
    path("test/code", views.test_code),
    path("test/revoke-all", views.test_revoke_all),
    path("test/fault", faults.arm),
]
