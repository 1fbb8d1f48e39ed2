"""Credentials for one Label Studio host: legacy ``Token`` keys or personal access tokens.

A personal access token (PAT) is a JWT *refresh* token: it is exchanged at
``POST {base}/api/token/refresh/`` for a short-lived access token sent as ``Bearer``. Any
other key is a legacy key sent as ``Token <key>``. Credentials are only ever meant for the
origin of ``base_url``; callers check :meth:`LabelStudioAuth.is_label_studio_url` first.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
from urllib.parse import urlsplit

import requests

from ml_backend.core.errors import LabelStudioUnavailable

log = logging.getLogger(__name__)

_B64URL_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Refresh this long before the access token's ``exp``; cache this long when it has none.
_EXPIRY_MARGIN_S = 30.0
_NO_EXP_TTL_S = 240.0

Origin = tuple[str, str, int]


def url_origin(url: str) -> Origin | None:
    """``(scheme, host, port)`` of an http(s) URL with default ports filled in; else None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def _b64url_json(segment: str) -> object:
    """Decode one unpadded base64url JWT segment as JSON; raise ValueError if it is not."""
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        return json.loads(raw)
    except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError("not a base64url JSON segment") from exc


def is_jwt(token: str) -> bool:
    """True when ``token`` looks like a JWT: three base64url segments, header is a JSON object."""
    segments = token.split(".")
    if len(segments) != 3 or not all(_B64URL_SEGMENT.match(s) for s in segments[:2]):
        return False
    try:
        return isinstance(_b64url_json(segments[0]), dict)
    except ValueError:
        return False


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (Unix seconds) of a JWT, read WITHOUT verifying it; None if absent."""
    try:
        payload = _b64url_json(token.split(".")[1])
    except (ValueError, IndexError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


class LabelStudioAuth:
    """Authorization headers for one Label Studio host. Thread-safe.

    Callers that get a 401 from Label Studio call :meth:`invalidate` and retry once.
    """

    def __init__(
        self, base_url: str, api_key: str, session: requests.Session, timeout_s: float = 10.0
    ) -> None:
        if url_origin(base_url) is None:
            raise ValueError(f"Label Studio URL {base_url!r} is not an http(s) URL")
        if not api_key:
            raise ValueError("Label Studio API key is empty")
        self.base_url = base_url.rstrip("/")
        self._origin = url_origin(self.base_url)
        self._key = api_key.strip()
        self._session = session
        self._timeout_s = timeout_s
        self.is_personal_access_token = is_jwt(self._key)
        self._lock = threading.Lock()
        self._access: str | None = None
        self._access_valid_until = 0.0  # time.time() seconds

    def __repr__(self) -> str:  # never show the key
        kind = "PAT" if self.is_personal_access_token else "legacy token"
        return f"LabelStudioAuth({self.base_url!r}, {kind})"

    def is_label_studio_url(self, url: str) -> bool:
        """True when ``url`` has the same scheme, host and port as the Label Studio URL."""
        return url_origin(url) == self._origin

    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header; refreshes the access token first when needed (PAT).

        Raises :class:`LabelStudioUnavailable` if a refresh fails.
        """
        if not self.is_personal_access_token:
            return {"Authorization": f"Token {self._key}"}
        with self._lock:
            if self._access is None or time.time() >= self._access_valid_until:
                self._refresh_locked()
            return {"Authorization": f"Bearer {self._access}"}

    def invalidate(self) -> None:
        """Forget the cached access token so the next :meth:`headers` call refreshes it."""
        with self._lock:
            self._access = None
            self._access_valid_until = 0.0

    def _refresh_locked(self) -> None:
        url = f"{self.base_url}/api/token/refresh/"
        try:
            resp = self._session.post(url, json={"refresh": self._key}, timeout=self._timeout_s)
        except requests.RequestException as exc:
            raise LabelStudioUnavailable(
                f"could not reach Label Studio at {url} to refresh the access token: "
                f"{type(exc).__name__}"
            ) from None
        if resp.status_code != 200:
            hint = (
                " (personal access token expired, revoked or not a Label Studio PAT?)"
                if resp.status_code in (400, 401, 403)
                else ""
            )
            raise LabelStudioUnavailable(
                f"Label Studio refused the token refresh at {url}: HTTP {resp.status_code}{hint}"
            )
        try:
            access = resp.json().get("access")
        except (ValueError, AttributeError):
            access = None
        if not isinstance(access, str) or not access:
            raise LabelStudioUnavailable(f"Label Studio token refresh at {url} returned no access")
        now = time.time()
        exp = jwt_expiry(access)
        if exp is None:
            valid_until = now + _NO_EXP_TTL_S
        elif exp - _EXPIRY_MARGIN_S > now:
            valid_until = exp - _EXPIRY_MARGIN_S
        else:  # very short-lived token: use half of what is left
            valid_until = now + max(0.0, exp - now) / 2
        self._access, self._access_valid_until = access, valid_until
        log.debug("refreshed Label Studio access token, valid for %.0f s", valid_until - now)
