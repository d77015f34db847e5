#!/usr/bin/env python3
"""Checks the TEST-ONLY authorization server end to end, without cargo.

    AUTHSERVER_ONLY=1 scripts/test &        # prints TOWER_BEARER_AUTHSERVER=...
    TOWER_BEARER_AUTHSERVER=http://127.0.0.1:PORT python3 tests/authserver/smoke_test.py

Standard library only. Exits non-zero on the first failed check.
"""
import base64
import concurrent.futures
import hashlib
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

BASE = os.environ.get("TOWER_BEARER_AUTHSERVER", "").rstrip("/")
REDIRECT_URI = "http://127.0.0.1/callback"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
VERBOSE = "-v" in sys.argv


def request(method, path, form=None, basic=None, bearer=None, raw_basic=None):
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    req = urllib.request.Request(BASE + path, data=data, method=method)
    if basic is not None:  # RFC 6749 2.3.1: form-urlencode id and secret, then base64
        user, password = (urllib.parse.quote_plus(part, safe="") for part in basic)
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    if raw_basic is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(raw_basic.encode()).decode())
    if bearer is not None:
        req.add_header("Authorization", "Bearer " + bearer)
    try:
        with OPENER.open(req, timeout=30) as resp:
            status, headers, body = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        status, headers, body = err.code, err.headers, err.read()
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        payload = body.decode(errors="replace")
    if VERBOSE:
        print(f"    {method} {path} -> {status} {payload}")
    return status, headers, payload


def check(cond, what, detail=""):
    if not cond:
        print(f"FAIL {what} {detail}")
        sys.exit(1)
    print(f"ok   {what}")


def token(form, basic=None):
    return request("POST", "/o/token/", {**form}, basic=basic)


def whoami(tok):
    return request("GET", "/api/whoami", bearer=tok)


def main():
    if not BASE:
        sys.exit("set TOWER_BEARER_AUTHSERVER=http://127.0.0.1:PORT")

    # Discovery
    s, _, doc = request("GET", "/o/.well-known/openid-configuration")
    check(s == 200 and doc["issuer"] == BASE + "/o", "discovery issuer == base + /o", doc and doc.get("issuer"))
    check(doc["token_endpoint"] == BASE + "/o/token/", "discovery token_endpoint")
    check(doc["revocation_endpoint"] == BASE + "/o/revoke_token/", "discovery revocation_endpoint")
    check(doc["introspection_endpoint"] == BASE + "/o/introspect/", "discovery introspection_endpoint")
    check(
        set(doc["token_endpoint_auth_methods_supported"]) == {"client_secret_basic", "client_secret_post"},
        "discovery token_endpoint_auth_methods_supported",
    )
    s, _, meta = request("GET", "/.well-known/oauth-authorization-server/o")
    check(s == 200 and meta["issuer"] == BASE + "/o", "RFC 8414 metadata issuer")

    # client_credentials
    special = "basic:s3cret/with+special%&="
    s, _, t = token({"grant_type": "client_credentials", "scope": "read"}, basic=("cc-basic", special))
    check(s == 200 and t["expires_in"] == 3600 and t["scope"] == "read", "cc-basic via Basic (form-urlencoded)", t)
    s, _, t = request("POST", "/o/token/", {"grant_type": "client_credentials"}, raw_basic="cc-basic:" + special)
    check(s == 401 and t["error"] == "invalid_client", "cc-basic via Basic NOT urlencoded -> 401 invalid_client", t)
    s, _, t = token({"grant_type": "client_credentials", "client_id": "cc-basic", "client_secret": special})
    check(s == 200, "cc-basic via Post", t)
    s, _, t = token({"grant_type": "client_credentials", "client_id": "cc-post", "client_secret": "post-secret"})
    check(s == 200 and t["token_type"] == "Bearer" and t["scope"] == "read write", "cc-post via Post", t)
    s, _, t = token({"grant_type": "client_credentials"}, basic=("cc-post", "wrong"))
    check(s == 401 and t["error"] == "invalid_client", "wrong secret -> 401 invalid_client", t)
    s, _, t = token({"grant_type": "client_credentials", "scope": "admin"}, basic=("cc-post", "post-secret"))
    check(s == 400 and t["error"] == "invalid_scope", "unknown scope -> 400 invalid_scope", t)

    # 2-second tokens
    s, _, t = token({"grant_type": "client_credentials"}, basic=("cc-short", "short-secret"))
    check(s == 200 and t["expires_in"] == 2, "cc-short expires_in == 2", t)
    short = t["access_token"]
    s, _, w = whoami(short)
    check(s == 200 and w["client_id"] == "cc-short", "whoami accepts fresh cc-short token", w)
    time.sleep(3)
    s, h, w = whoami(short)
    check(s == 401 and h["WWW-Authenticate"] == 'Bearer error="invalid_token"', "whoami rejects it after 3 s", (s, w))
    s, h, _ = request("GET", "/api/whoami")
    check(s == 401 and h["WWW-Authenticate"] == 'Bearer error="invalid_token"', "whoami without token -> 401")

    # password grant, refresh rotation, reuse
    alice = {"grant_type": "password", "username": "alice", "password": "alice-password"}
    s, _, t1 = token(alice, basic=("rt-client", "rt-secret"))
    check(s == 200 and "refresh_token" in t1 and t1["expires_in"] == 3600, "password grant issues a refresh token", t1)
    s, _, t2 = token({"grant_type": "refresh_token", "refresh_token": t1["refresh_token"]}, basic=("rt-client", "rt-secret"))
    check(s == 200 and t2["refresh_token"] != t1["refresh_token"], "refresh rotates the refresh token", t2)
    check(whoami(t1["access_token"])[0] == 401, "previous access token revoked by the refresh")
    check(whoami(t2["access_token"])[0] == 200, "new access token accepted")
    s, _, e = token({"grant_type": "refresh_token", "refresh_token": t1["refresh_token"]}, basic=("rt-client", "rt-secret"))
    check(s == 400 and e["error"] == "invalid_grant", "reused old refresh token -> 400 invalid_grant", e)
    s, _, e = token({"grant_type": "refresh_token", "refresh_token": t2["refresh_token"]}, basic=("rt-client", "rt-secret"))
    check(s == 400 and e["error"] == "invalid_grant", "reuse revoked the whole family (new RT dead too)", e)
    check(whoami(t2["access_token"])[0] == 401, "... and its access token")

    # concurrent use of one refresh token: exactly one wins
    s, _, t = token(alice, basic=("rt-client", "rt-secret"))
    form = {"grant_type": "refresh_token", "refresh_token": t["refresh_token"]}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: token(form, basic=("rt-client", "rt-secret")), range(8)))
    statuses = sorted(r[0] for r in results)
    check(statuses == [200] + [400] * 7, "8 concurrent refreshes of one RT: one 200, seven 400", statuses)
    winner = next(r[2] for r in results if r[0] == 200)
    check(whoami(winner["access_token"])[0] == 401, "... and the reuse revoked the winner's new access token")

    # authorization code via /test/code
    s, _, c = request("POST", "/test/code", {"client_id": "ac-client", "redirect_uri": REDIRECT_URI})
    check(s == 200 and c["code"], "/test/code issues a code", c)
    exchange = {"grant_type": "authorization_code", "code": c["code"], "redirect_uri": REDIRECT_URI}
    s, _, t = token(exchange, basic=("ac-client", "ac-secret"))
    check(s == 200 and "refresh_token" in t, "code exchange without PKCE", t)
    s, _, w = whoami(t["access_token"])
    check(s == 200 and w["client_id"] == "ac-client" and w["username"] == "alice", "code token accepted", w)
    s, _, e = token(exchange, basic=("ac-client", "ac-secret"))
    check(s == 400 and e["error"] == "invalid_grant", "code replay -> invalid_grant", e)

    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    pkce = {"client_id": "ac-client", "redirect_uri": REDIRECT_URI, "scope": "read",
            "code_challenge": challenge, "code_challenge_method": "S256"}
    code = request("POST", "/test/code", pkce)[2]["code"]
    s, _, t = token({**exchange, "code": code, "code_verifier": verifier}, basic=("ac-client", "ac-secret"))
    check(s == 200 and t["scope"] == "read", "code exchange with PKCE S256", t)
    code = request("POST", "/test/code", pkce)[2]["code"]
    s, _, e = token({**exchange, "code": code, "code_verifier": "x" * 43}, basic=("ac-client", "ac-secret"))
    check(s == 400 and e["error"] == "invalid_grant", "PKCE wrong verifier -> invalid_grant", e)
    code = request("POST", "/test/code", pkce)[2]["code"]
    s, _, e = token({**exchange, "code": code}, basic=("ac-client", "ac-secret"))
    check(s == 400 and e["error"] == "invalid_request", "PKCE missing verifier -> invalid_request", e)

    plain = {**pkce, "code_challenge": verifier, "code_challenge_method": "plain"}
    code = request("POST", "/test/code", plain)[2]["code"]
    s, _, t = token({**exchange, "code": code, "code_verifier": verifier}, basic=("ac-client", "ac-secret"))
    check(s == 200, "code exchange with PKCE plain", t)
    s, _, _ = request("POST", "/o/token", {"grant_type": "client_credentials"}, basic=("cc-post", "post-secret"))
    check(s == 404, "/o/token without trailing slash -> 404")

    # RFC 7009 revocation
    s, _, t = token({"grant_type": "client_credentials"}, basic=("cc-post", "post-secret"))
    check(whoami(t["access_token"])[0] == 200, "cc-post token accepted")
    s, _, _ = request("POST", "/o/revoke_token/", {"token": t["access_token"], "token_type_hint": "access_token"},
                      basic=("cc-post", "post-secret"))
    check(s == 200, "/o/revoke_token/ -> 200")
    s, h, _ = whoami(t["access_token"])
    check(s == 401 and h["WWW-Authenticate"] == 'Bearer error="invalid_token"', "revoked token -> 401 + WWW-Authenticate")

    # RFC 7662 introspection
    s, _, t = token({"grant_type": "client_credentials"}, basic=("cc-post", "post-secret"))
    s, _, i = request("POST", "/o/introspect/", {"token": t["access_token"]}, basic=("cc-post", "post-secret"))
    check(s == 200 and i["active"] is True and i["client_id"] == "cc-post", "introspection active", i)

    # /test/revoke-all
    toks = [token({"grant_type": "client_credentials"}, basic=("cc-post", "post-secret"))[2]["access_token"] for _ in range(2)]
    other = token({"grant_type": "client_credentials"}, basic=("cc-basic", special))[2]["access_token"]
    s, _, _ = request("POST", "/test/revoke-all", {"client_id": "cc-post"})
    check(s == 204, "/test/revoke-all -> 204")
    check(all(whoami(x)[0] == 401 for x in toks), "all cc-post tokens rejected after revoke-all")
    check(whoami(other)[0] == 200, "other clients' tokens untouched")
    s, _, t = token({"grant_type": "client_credentials"}, basic=("cc-post", "post-secret"))
    check(s == 200 and whoami(t["access_token"])[0] == 200, "new token works after revoke-all")
    rt = token(alice, basic=("rt-client", "rt-secret"))[2]
    request("POST", "/test/revoke-all", {"client_id": "rt-client"})
    s, _, e = token({"grant_type": "refresh_token", "refresh_token": rt["refresh_token"]}, basic=("rt-client", "rt-secret"))
    check(s == 400 and e["error"] == "invalid_grant", "refresh token dead after revoke-all", e)

    # /test/fault
    s, _, _ = request("POST", "/test/fault", {"client_id": "cc-faulty", "mode": "unavailable"})
    check(s == 204, "/test/fault arms a fault -> 204")
    s, h, e = token({"grant_type": "client_credentials"}, basic=("cc-faulty", "faulty-secret"))
    check(s == 503 and e["error"] == "temporarily_unavailable", "armed: 503 temporarily_unavailable", e)
    s, _, t = token({"grant_type": "client_credentials"}, basic=("cc-faulty", "faulty-secret"))
    check(s == 200, "once only: the next request is served", t)
    rt = token(alice, basic=("rt-lost", "lost-secret"))[2]["refresh_token"]
    request("POST", "/test/fault", {"client_id": "rt-lost", "mode": "rotate_then_500"})
    s, _, e = token({"grant_type": "refresh_token", "refresh_token": rt}, basic=("rt-lost", "lost-secret"))
    check(s == 500 and e["error"] == "server_error", "rotate_then_500 answers 500", e)
    s, _, e = token({"grant_type": "refresh_token", "refresh_token": rt}, basic=("rt-lost", "lost-secret"))
    check(s == 400 and e["error"] == "invalid_grant", "... after rotating: the refresh token is spent", e)
    s, _, _ = request("POST", "/test/fault", {"client_id": "cc-faulty", "mode": "explode"})
    check(s == 400, "/test/fault with an unknown mode -> 400")

    print("all checks passed")


if __name__ == "__main__":
    main()
