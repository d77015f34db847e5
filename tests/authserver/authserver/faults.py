"""TEST-ONLY fault injection for the token endpoint.

``POST /test/fault`` with form fields ``client_id``, ``mode`` and ``count``
(default 1) arms ``count`` faults for that client's next requests to
``/o/token/``. Faults are kept per client, so tests that run at the same time
with different clients do not disturb each other. Modes:

* ``unavailable``     answer 503 ``temporarily_unavailable`` without acting on the
                      request (the client may safely send it again).
* ``rotate_then_500`` let django-oauth-toolkit act on the request (a refresh
                      token is rotated and the transaction committed), then answer
                      500 instead: the client never learns the new refresh token.

A real authorization server has nothing of this.
"""
import base64
import threading
from urllib.parse import unquote_plus

from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

MODES = ("unavailable", "rotate_then_500")

_lock = threading.Lock()
_armed = {}  # client_id -> list of modes, next first


@csrf_exempt
@require_POST
def arm(request):
    client_id = request.POST.get("client_id", "")
    mode = request.POST.get("mode", "")
    try:
        count = int(request.POST.get("count", "1"))
    except ValueError:
        count = -1
    if not client_id or mode not in MODES or count < 1:
        return JsonResponse({"error": "invalid_request"}, status=400)
    with _lock:
        _armed.setdefault(client_id, []).extend([mode] * count)
    return HttpResponse(status=204)


def _client_id(request):
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            user = base64.b64decode(credentials).decode().partition(":")[0]
            return unquote_plus(user)
        except (ValueError, UnicodeDecodeError):
            return ""
    return request.POST.get("client_id", "")


def _take(client_id):
    with _lock:
        modes = _armed.get(client_id)
        return modes.pop(0) if modes else None


class TokenFaultMiddleware:
    """Applies the armed faults to ``POST /o/token/``."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.method != "POST" or request.path != "/o/token/":
            return self.get_response(request)
        mode = _take(_client_id(request))
        if mode == "unavailable":
            response = JsonResponse({"error": "temporarily_unavailable"}, status=503)
            response["Retry-After"] = "0"
            return response
        response = self.get_response(request)
        if mode == "rotate_then_500":
            return JsonResponse({"error": "server_error"}, status=500)
        return response
