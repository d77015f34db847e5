"""TEST-ONLY: create the fixed clients, user alice and the OIDC RSA key.

Idempotent: running it again resets the clients and the user to the values
below. Run after ``manage.py migrate``.
"""
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from oauth2_provider.models import get_application_model

Application = get_application_model()

USER = ("alice", "alice-password")

# client_id, client_secret, grant type, redirect URIs, ID-token algorithm
CLIENTS = [
    ("cc-basic", "basic:s3cret/with+special%&=", Application.GRANT_CLIENT_CREDENTIALS, "", ""),
    ("cc-post", "post-secret", Application.GRANT_CLIENT_CREDENTIALS, "", ""),
    ("cc-short", "short-secret", Application.GRANT_CLIENT_CREDENTIALS, "", ""),
    ("rt-client", "rt-secret", Application.GRANT_PASSWORD, "", ""),
    # Clients of the fault-injection tests (one each: faults are armed per client).
    ("cc-faulty", "faulty-secret", Application.GRANT_CLIENT_CREDENTIALS, "", ""),
    ("rt-busy", "busy-secret", Application.GRANT_PASSWORD, "", ""),
    ("rt-lost", "lost-secret", Application.GRANT_PASSWORD, "", ""),
    (
        "ac-client",
        "ac-secret",
        Application.GRANT_AUTHORIZATION_CODE,
        "http://127.0.0.1/callback",
        Application.RS256_ALGORITHM,
    ),
]


def ensure_rsa_key(path):
    if path.exists() and path.read_text().strip():
        return False
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pem)
    path.chmod(0o600)
    return True


class Command(BaseCommand):
    help = "TEST-ONLY: create the fixed OAuth clients, user alice and the OIDC RSA key"

    def handle(self, *args, **options):
        created_key = ensure_rsa_key(settings.OIDC_KEY_FILE)

        username, password = USER
        user, _ = get_user_model().objects.get_or_create(username=username)
        user.set_password(password)
        user.save()

        for client_id, secret, grant_type, redirect_uris, algorithm in CLIENTS:
            app = Application.objects.filter(client_id=client_id).first() or Application(client_id=client_id)
            app.name = client_id
            app.client_secret = secret  # hashed on save; the plaintext above is what clients send
            app.hash_client_secret = True
            app.client_type = Application.CLIENT_CONFIDENTIAL
            app.authorization_grant_type = grant_type
            app.redirect_uris = redirect_uris
            app.algorithm = algorithm
            app.skip_authorization = True
            app.user = None
            app.save()

        self.stdout.write(
            "authserver: user %s, clients %s, RSA key %s"
            % (username, ", ".join(c[0] for c in CLIENTS), "generated" if created_key else "reused")
        )
