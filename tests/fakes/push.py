"""Push services on loopback: FCM's HTTP v1 API (with Google's OAuth token endpoint) and a
Web Push service (RFC 8030) that decrypts what it receives.

``FakeFCM`` checks what the real ones check: the service account's signed JWT at the token
endpoint, the bearer token on every send. ``FakePushService`` checks the VAPID signature and
decrypts the aes128gcm payload with the subscription's private key, so a test sees the
notification exactly as the browser would.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _Server:
    """A threaded HTTP server on 127.0.0.1 and a free port; subclasses answer ``handle``."""

    name = "fake"

    def handle(self, method: str, path: str, headers, body: bytes) -> tuple[int, dict, bytes]:
        raise NotImplementedError

    def start(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, headers, data = fake.handle("POST", self.path, self.headers, body)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _json(status: int, payload: dict, **headers) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json", **headers}, json.dumps(payload).encode()


def _fcm_error(code: str) -> list[dict]:
    return [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]


# --- FCM ---------------------------------------------------------------------------------------------


@dataclass
class FakeFCM(_Server):
    """``POST /token`` (OAuth2 JWT bearer grant) and ``POST /v1/projects/<id>/messages:send``.

    ``unregistered``: tokens answered 404 UNREGISTERED; ``invalid``: tokens answered 400
    INVALID_ARGUMENT ("not a valid FCM registration token"); ``unavailable``: answer 503 to every send.
    """

    project_id: str = "switchboard-test"
    unregistered: set[str] = field(default_factory=set)
    invalid: set[str] = field(default_factory=set)
    unavailable: bool = False
    sent: list[dict] = field(default_factory=list)
    tokens_issued: list[str] = field(default_factory=list)
    name = "fake-fcm"

    def __post_init__(self):
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.client_email = f"push@{self.project_id}.iam.gserviceaccount.com"
        self.lock = threading.Lock()

    def service_account_file(self, directory) -> str:
        """A service-account JSON like the one Firebase's console hands out, pointing at this fake."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        path = os.path.join(directory, "service-account.json")
        with open(path, "w") as handle:
            json.dump({
                "type": "service_account", "project_id": self.project_id, "private_key_id": "key-1",
                "private_key": pem, "client_email": self.client_email, "client_id": "1234567890",
                "token_uri": f"{self.url}/token",
            }, handle)
        return path

    def _verify_assertion(self, assertion: str) -> bool:
        try:
            header, payload, signature = assertion.split(".")
            self._key.public_key().verify(
                b64url_decode(signature), f"{header}.{payload}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except Exception:
            return False
        claims = json.loads(b64url_decode(payload))
        return claims.get("iss") == self.client_email and "firebase.messaging" in claims.get("scope", "")

    def handle(self, method, path, headers, body):
        if path == "/token":
            form = parse_qs(body.decode())
            if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"] or not self._verify_assertion(
                form.get("assertion", [""])[0]
            ):
                return _json(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
            token = f"ya29.fake-{uuid.uuid4().hex}"
            with self.lock:
                self.tokens_issued.append(token)
            return _json(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})
        if path != f"/v1/projects/{self.project_id}/messages:send":
            return _json(404, {"error": {"code": 404, "message": "Not found", "status": "NOT_FOUND"}})
        bearer = headers.get("Authorization", "").removeprefix("Bearer ")
        if bearer not in self.tokens_issued:
            return _json(401, {"error": {"code": 401, "message": "Request had invalid authentication credentials.",
                                         "status": "UNAUTHENTICATED"}})
        if self.unavailable:
            return _json(503, {"error": {"code": 503, "message": "The service is currently unavailable.",
                                         "status": "UNAVAILABLE"}}, **{"Retry-After": "120"})
        message = json.loads(body)["message"]
        token = message.get("token")
        if token in self.unregistered:
            return _json(404, {"error": {
                "code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND",
                "details": _fcm_error("UNREGISTERED"),
            }})
        if token in self.invalid:
            return _json(400, {"error": {
                "code": 400, "message": "The registration token is not a valid FCM registration token",
                "status": "INVALID_ARGUMENT",
                "details": _fcm_error("INVALID_ARGUMENT"),
            }})
        with self.lock:
            self.sent.append(message)
            number = len(self.sent)
        return _json(200, {"name": f"projects/{self.project_id}/messages/0:{number}%{uuid.uuid4().hex[:8]}"})

    def to(self, token: str) -> list[dict]:
        return [m for m in self.sent if m.get("token") == token]


# --- Web Push ------------------------------------------------------------------------------------------


def vapid_keys() -> tuple[str, str]:
    """(private key, application server public key), both base64url as VAPID_* settings take them."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = b64url(key.private_numbers().private_value.to_bytes(32, "big"))
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    public = b64url(point)
    return private, public


@dataclass
class Subscriber:
    """A browser's push subscription: its keys stay here, the fake decrypts with them."""

    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes

    def token(self) -> str:
        public = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return json.dumps({"endpoint": self.endpoint, "expirationTime": None,
                           "keys": {"p256dh": b64url(public), "auth": b64url(self.auth)}})


@dataclass
class Push:
    path: str
    headers: dict  # names lower-cased: HTTP header names are case-insensitive
    payload: dict | None
    vapid_key: str
    vapid_claims: dict


@dataclass
class FakePushService(_Server):
    """``POST /push/<id>``: 201 for a live subscription, 410 for one in ``gone``, 404 for an unknown one."""

    gone: set[str] = field(default_factory=set)
    received: list[Push] = field(default_factory=list)
    name = "fake-push-service"

    def __post_init__(self):
        self.subscribers: dict[str, Subscriber] = {}
        self.lock = threading.Lock()

    def subscribe(self, name: str) -> Subscriber:
        subscriber = Subscriber(f"{self.url}/push/{name}", ec.generate_private_key(ec.SECP256R1()), os.urandom(16))
        self.subscribers[f"/push/{name}"] = subscriber
        return subscriber

    @staticmethod
    def _vapid(authorization: str) -> tuple[str, dict]:
        """The signer's public key and the JWT's claims, after checking the ES256 signature with that key."""
        params = dict(part.strip().split("=", 1) for part in authorization.removeprefix("vapid ").split(","))
        header, payload, signature = params["t"].split(".")
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64url_decode(params["k"]))
        raw = b64url_decode(signature)
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        public.verify(der, f"{header}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
        return params["k"], json.loads(b64url_decode(payload))

    def handle(self, method, path, headers, body):
        import http_ece

        subscriber = self.subscribers.get(path)
        if subscriber is None:
            return 404, {}, b""
        if path.removeprefix("/push/") in self.gone:
            return 410, {}, b""
        try:
            key, claims = self._vapid(headers.get("Authorization", ""))
        except Exception:
            return 403, {}, b"bad VAPID signature"
        payload = None
        if body:
            plain = http_ece.decrypt(body, private_key=subscriber.private_key, auth_secret=subscriber.auth,
                                     version=headers.get("Content-Encoding", "aes128gcm"))
            payload = json.loads(plain)
        with self.lock:
            self.received.append(Push(path, {k.lower(): v for k, v in headers.items()}, payload, key, claims))
        return 201, {"Location": f"{self.url}/message/{uuid.uuid4().hex}"}, b""

    def to(self, name: str) -> list[Push]:
        return [push for push in self.received if push.path == f"/push/{name}"]
