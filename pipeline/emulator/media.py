"""Image inputs (data URI, base64, URL) and the loopback-only rule for outgoing requests."""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import re
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from PIL import Image, UnidentifiedImageError

UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
_DATA_URI_RE = re.compile(r"^data:(?P<mime>[\w.+/-]*)(?:;[\w=.+-]+)*;base64,(?P<data>.*)$", re.S)
FETCH_TIMEOUT_S = 5.0
MAX_FETCH_BYTES = 32 * 1024 * 1024


class _LoopbackRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to another loopback http(s) URL; refuse any other target."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if not is_loopback_url(newurl):
            raise urllib.error.HTTPError(
                req.full_url, code, f"redirect to a non-loopback URL refused: {newurl}", headers, fp
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


# Never through a proxy from the environment, never redirected off loopback: loopback traffic
# must stay on this machine (webhooks, upload endpoints and reference fetches all use this).
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _LoopbackRedirects())


class BadImage(ValueError):
    """An image input that cannot be read."""


def is_loopback_host(host: str | None) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (names other than localhost are not resolved)."""
    if not host:
        return False
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    """True for an http(s) URL whose host is a loopback address."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and is_loopback_host(parts.hostname)


def is_url(value: str) -> bool:
    """True for an http(s) URL."""
    return value.startswith(("http://", "https://"))


def decode_inline(value: str) -> bytes:
    """The bytes of a data URI or a bare base64 string; BadImage if it is neither."""
    match = _DATA_URI_RE.match(value)
    payload = match.group("data") if match else value
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadImage("not a data URI or base64 image") from None


def open_image(data: bytes) -> Image.Image:
    """A Pillow image of `data` (format and size checked); BadImage if it is not an image."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImage(f"not a readable image ({exc.__class__.__name__})") from None
    return image


def fetch_loopback(url: str) -> bytes:
    """GET a loopback URL's body; BadImage on any failure (never called for other hosts)."""
    if not is_loopback_url(url):
        raise BadImage("only loopback URLs are fetched")
    try:
        with OPENER.open(url, timeout=FETCH_TIMEOUT_S) as response:
            data: bytes = response.read(MAX_FETCH_BYTES + 1)
    except (OSError, ValueError) as exc:
        raise BadImage(f"download failed ({exc.__class__.__name__})") from None
    if len(data) > MAX_FETCH_BYTES:
        raise BadImage("download too large")
    return data
