"""Push notifications: Firebase Cloud Messaging (HTTP v1) and Web Push (VAPID).

A push delivery goes to every device of the customer that the provider serves: FCM
registration tokens for ``fcm``, Web Push subscriptions for ``webpush``. The delivery is sent
when at least one device accepted it. A device the push service calls gone (FCM
``UNREGISTERED``, a token FCM says is not a registration token, Web Push 404/410) comes back
in ``SendResult.dead_devices`` and the dispatcher deletes it, so the next campaign finds the
customer unreachable by push instead of sending into the void.

Resends after a crash reuse a key derived from the delivery (FCM collapse key, APNs
collapse id, Web Push ``Topic``), so the device replaces the first copy rather than showing
two.

FCM is spoken directly, with httpx, rather than through firebase-admin's ``messaging``
module: that module hard-codes ``https://fcm.googleapis.com`` (there is no FCM emulator and
no endpoint option; the SDK's maintainers declined one), so a test could only reach a
loopback fake by patching the SDK's private classes. The wire protocol is small and
documented: an OAuth2 access token minted by google-auth (a firebase-admin dependency) from
the service-account file — the same credentials code firebase-admin uses, honouring the
file's ``token_uri`` — and one ``POST /v1/projects/<id>/messages:send`` per device.
``FCM_API_BASE`` moves the endpoint (tests, or an egress proxy).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from django.conf import settings

from .base import OutgoingMessage, Provider, SendResult

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
HTTP_TIMEOUT = 10.0
# FCM error codes that mean the token will never work again for this project.
FCM_DEAD_CODES = {"UNREGISTERED", "SENDER_ID_MISMATCH"}
TEMPORARY_HTTP = {401, 403, 408, 425, 429}


def collapse_key(message: OutgoingMessage) -> str:
    return message.idempotency_key


def topic_for(message: OutgoingMessage) -> str:
    """RFC 8030 ``Topic``: at most 32 characters of the URL-safe base64 alphabet."""
    digest = hashlib.sha256(message.idempotency_key.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:32]


@dataclass
class DeviceOutcome:
    device_id: int
    # ok, dead, temporary, permanent
    state: str
    detail: str = ""
    retry_after: float | None = None


def _retry_after(headers) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value else None
    except ValueError:
        return None


class PushProvider(Provider):
    """Fans a batch out to devices, a few requests at a time, and folds the outcomes back."""

    channel = "push"
    device_kind = ""

    def prepare(self) -> str:
        """Per-batch set-up; returns why nothing can be sent (a configuration problem), or ''."""
        return ""

    def send_device(self, message: OutgoingMessage, device_id: int, token: str) -> DeviceOutcome:
        raise NotImplementedError

    def send_batch(self, messages: list[OutgoingMessage]) -> list[SendResult]:
        problem = self.prepare()
        if problem:
            # Fixable by the operator: retried, and failed only after DELIVERY_MAX_ATTEMPTS.
            return [SendResult(m.delivery_id, False, error=problem) for m in messages]
        jobs = [
            (message, device_id, token)
            for message in messages
            for device_id, kind, token in message.devices
            if kind == self.device_kind
        ]
        outcomes: dict[int, list[DeviceOutcome]] = {m.delivery_id: [] for m in messages}
        if jobs:
            workers = max(1, min(settings.DELIVERY_CONCURRENCY, len(jobs)))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"push-{self.name}") as pool:
                done = pool.map(lambda job: (job[0].delivery_id, self._safely(*job)), jobs)
                for delivery_id, outcome in done:
                    outcomes[delivery_id].append(outcome)
        return [self._result(message, outcomes[message.delivery_id]) for message in messages]

    def _safely(self, message: OutgoingMessage, device_id: int, token: str) -> DeviceOutcome:
        try:
            return self.send_device(message, device_id, token)
        except Exception as exc:  # one device's surprise must not lose the others' outcomes
            return DeviceOutcome(device_id, "temporary", f"{type(exc).__name__}: {exc}")

    def _result(self, message: OutgoingMessage, outcomes: list[DeviceOutcome]) -> SendResult:
        dead = [o.device_id for o in outcomes if o.state == "dead"]
        accepted = [o for o in outcomes if o.state == "ok"]
        if accepted:
            return SendResult(message.delivery_id, True, provider_message_id=accepted[0].detail[:255],
                              dead_devices=dead)
        if not outcomes:
            return SendResult(message.delivery_id, False, error=f"no {self.device_kind} device", permanent=True)
        temporary = [o for o in outcomes if o.state == "temporary"]
        if temporary:
            waits = [o.retry_after for o in temporary if o.retry_after]
            return SendResult(message.delivery_id, False, error=temporary[0].detail, dead_devices=dead,
                              retry_after=max(waits) if waits else None)
        permanent = [o for o in outcomes if o.state == "permanent"]
        error = permanent[0].detail if permanent else (
            f"every {self.device_kind} device is gone: {outcomes[0].detail}"
        )
        return SendResult(message.delivery_id, False, error=error, permanent=True, dead_devices=dead)


# --- FCM HTTP v1 ----------------------------------------------------------------------------------

_credentials_lock = threading.Lock()
_credentials: dict[str, object] = {}


def fcm_access(path: str) -> tuple[str, str]:
    """(access token, project id) for the service-account file; tokens are reused until they expire."""
    from google.auth.transport.requests import Request
    from google.oauth2 import service_account

    with _credentials_lock:
        credentials = _credentials.get(path)
        if credentials is None:
            credentials = service_account.Credentials.from_service_account_file(path, scopes=[FCM_SCOPE])
            _credentials[path] = credentials
        if not credentials.valid:
            credentials.refresh(Request())
        return credentials.token, credentials.project_id


class FCMPush(PushProvider):
    name = "fcm"
    device_kind = "fcm"

    def __init__(self):
        self._client = None
        self._token = ""
        self._url = ""

    def prepare(self) -> str:
        import httpx
        from google.auth.exceptions import GoogleAuthError

        path = settings.FCM_CREDENTIALS_FILE
        if not path:
            return "FCM_CREDENTIALS_FILE is not set"
        try:
            self._token, file_project = fcm_access(path)
        except (OSError, ValueError) as exc:
            return f"cannot read FCM_CREDENTIALS_FILE: {exc}"
        except GoogleAuthError as exc:
            return f"FCM access token refused: {exc}"
        project = settings.FCM_PROJECT_ID or file_project
        if not project:
            return "FCM_PROJECT_ID is not set and the service-account file names no project"
        self._url = f"{settings.FCM_API_BASE}/v1/projects/{project}/messages:send"
        if self._client is None:
            self._client = httpx.Client(timeout=HTTP_TIMEOUT)
        return ""

    def payload(self, message: OutgoingMessage, token: str) -> dict:
        content = message.content
        key = collapse_key(message)
        ttl = settings.PUSH_TTL_SECONDS
        data = {"delivery_id": str(message.delivery_id)}
        if content.get("link"):
            data["link"] = content["link"]
        body = {
            "token": token,
            "notification": {"title": content.get("title", ""), "body": content.get("body", "")},
            "data": data,
            "android": {"collapse_key": key, "ttl": f"{ttl}s", "notification": {"tag": key}},
            "apns": {"headers": {"apns-collapse-id": key[:64], "apns-expiration": str(int(time.time()) + ttl)}},
            "webpush": {"headers": {"TTL": str(ttl), "Topic": topic_for(message)}},
        }
        if content.get("link", "").startswith("https://"):
            body["webpush"]["fcm_options"] = {"link": content["link"]}
        return {"message": body}

    def send_device(self, message: OutgoingMessage, device_id: int, token: str) -> DeviceOutcome:
        import httpx

        try:
            response = self._client.post(
                self._url, json=self.payload(message, token), headers={"Authorization": f"Bearer {self._token}"},
            )
        except httpx.HTTPError as exc:
            return DeviceOutcome(device_id, "temporary", f"cannot reach FCM: {exc}")
        if response.status_code == 200:
            return DeviceOutcome(device_id, "ok", response.json().get("name", ""))
        return self.failure(device_id, response)

    @staticmethod
    def failure(device_id: int, response) -> DeviceOutcome:
        try:
            error = response.json().get("error") or {}
        except ValueError:
            error = {}
        details = [d for d in error.get("details", []) if isinstance(d, dict)]
        codes = {d.get("errorCode") for d in details} - {None}
        fields = {v.get("field") for d in details for v in d.get("fieldViolations", []) if isinstance(v, dict)}
        text = error.get("message") or response.text[:200]
        code = next(iter(sorted(codes)), error.get("status", ""))
        detail = f"FCM {response.status_code} {code}: {text}".strip()
        bad_token = (error.get("status") == "INVALID_ARGUMENT" or "INVALID_ARGUMENT" in codes) and (
            "message.token" in fields or "registration token" in text.lower()
        )
        if codes & FCM_DEAD_CODES or bad_token:
            return DeviceOutcome(device_id, "dead", detail)
        if response.status_code >= 500 or response.status_code in TEMPORARY_HTTP:
            return DeviceOutcome(device_id, "temporary", detail, _retry_after(response.headers))
        return DeviceOutcome(device_id, "permanent", detail)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


# --- Web Push ---------------------------------------------------------------------------------------


class WebPush(PushProvider):
    name = "webpush"
    device_kind = "webpush"

    def __init__(self):
        self._vapid = None
        # One HTTP session per worker thread (requests sessions are not meant to be shared).
        self._local = threading.local()
        self._sessions = []

    def prepare(self) -> str:
        from py_vapid import Vapid

        key = settings.VAPID_PRIVATE_KEY
        if not key:
            return "VAPID_PRIVATE_KEY is not set"
        if not settings.VAPID_SUBJECT:
            return "VAPID_SUBJECT is not set"
        try:
            self._vapid = Vapid.from_file(key) if os.path.isfile(key) else Vapid.from_string(private_key=key)
        except Exception as exc:
            return f"VAPID_PRIVATE_KEY cannot be read: {exc}"
        return ""

    def _session(self):
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            self._sessions.append(session)
        return session

    def send_device(self, message: OutgoingMessage, device_id: int, token: str) -> DeviceOutcome:
        import requests
        from pywebpush import WebPushException, webpush

        try:
            subscription = json.loads(token)
            if not isinstance(subscription, dict) or not subscription.get("endpoint") or not subscription.get("keys"):
                raise ValueError("no endpoint or keys")
        except ValueError as exc:
            return DeviceOutcome(device_id, "dead", f"not a Web Push subscription: {exc}")
        content = message.content
        payload = json.dumps({
            "title": content.get("title", ""), "body": content.get("body", ""), "link": content.get("link", ""),
            # The service worker shows it with this tag, so a resend replaces the notification.
            "tag": collapse_key(message),
        })
        try:
            response = webpush(
                subscription_info=subscription,
                data=payload,
                vapid_private_key=self._vapid,
                # webpush() adds aud and exp to the claims it is given: a fresh dict each time.
                vapid_claims={"sub": settings.VAPID_SUBJECT},
                ttl=settings.PUSH_TTL_SECONDS,
                headers={"Topic": topic_for(message), "Urgency": "normal"},
                timeout=HTTP_TIMEOUT,
                requests_session=self._session(),
            )
        except WebPushException as exc:
            status = exc.status_code
            detail = f"push service {status}: {exc.message}" if status else f"Web Push: {exc.message}"
            if status is None:
                # pywebpush refuses before sending when the subscription's keys are malformed.
                return DeviceOutcome(device_id, "dead", detail)
            if status in (404, 410):
                return DeviceOutcome(device_id, "dead", detail)
            if status >= 500 or status in TEMPORARY_HTTP:
                wait = _retry_after(getattr(exc.response, "headers", None))
                return DeviceOutcome(device_id, "temporary", detail, wait)
            return DeviceOutcome(device_id, "permanent", detail)
        except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                requests.exceptions.MissingSchema) as exc:
            return DeviceOutcome(device_id, "dead", f"the subscription's endpoint is not a URL: {exc}")
        except requests.RequestException as exc:
            return DeviceOutcome(device_id, "temporary", f"cannot reach the push service: {exc}")
        except (ValueError, TypeError) as exc:
            # Keys that do not decode to a P-256 point and an auth secret: never usable.
            return DeviceOutcome(device_id, "dead", f"unusable Web Push subscription keys: {exc}")
        # RFC 8030: the push service names the message it created in Location.
        return DeviceOutcome(device_id, "ok", response.headers.get("Location") or f"webpush-{message.delivery_id}")

    def close(self) -> None:
        while self._sessions:
            self._sessions.pop().close()
        self._local = threading.local()
