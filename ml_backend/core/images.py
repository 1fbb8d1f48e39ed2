"""The single place where task images are fetched, cached and decoded.

URL forms accepted (as found in task data):
- ``/data/upload/…``, ``/data/local-files/?d=…`` or any other path starting with ``/``:
  prefixed with ``LABEL_STUDIO_URL``. ``/data/local-files/?d=rel/path`` is read straight from
  ``LOCAL_FILES_DOCUMENT_ROOT`` when set and the file exists there (never outside it).
- ``http(s)://…``: fetched directly; credentials only when the origin is Label Studio's.
  Outside Label Studio's origin only public addresses are reached, unless allowlisted
  (:mod:`ml_backend.core.url_guard`), checked at every redirect and again at connect time.
- ``s3://``, ``gs://``, ``azure-blob://``: via ``{LS}/tasks/<task_id>/presign/?fileuri=<b64>``
  (needs the task id). Anything else (``file://``, ``data:``, …) is refused.

Downloads are cached on disk under ``CACHE_DIR/images`` keyed by the resolved URL (so a
changed file behind the same URL is not re-fetched until evicted).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urljoin, urlsplit, urlunsplit

import numpy as np
import requests
from PIL import Image

from ml_backend.core.errors import ImageError, ImageNotAllowed, ImageTooLarge
from ml_backend.core.files import Countdown
from ml_backend.core.settings import Settings
from ml_backend.core.url_guard import AddressPolicy, AddressRefused, GuardedAdapter
from ml_backend.labelstudio.auth import LabelStudioAuth, url_origin

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
CLOUD_SCHEMES = ("s3", "gs", "azure-blob")
_UPLOAD_PREFIX = "/data/upload/"
_LOCAL_FILES_PATH = "/data/local-files"
_CHUNK = 64 * 1024
_SWEEP_EVERY_WRITES = 32  # check the cache's total size at most this often
_STALE_TMP_S = 3600.0


@dataclass(frozen=True)
class LoadedImage:
    pixels: np.ndarray  # H x W x 3, uint8, RGB order, C-contiguous, writable
    sha256: str  # hex digest of the raw file bytes
    source: str  # the URL as given


def _shown(url: str) -> str:
    """``url`` for messages and logs, without any ``user:password@`` part."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def decode_image(data: bytes, max_pixels: int, source: str = "<bytes>") -> np.ndarray:
    """Decode image bytes into an H x W x 3 uint8 RGB array (writable, C-contiguous).

    The pixel count is checked from the header before any pixels are decoded. No EXIF
    rotation is applied (Label Studio shows the stored orientation). Alpha is composited on
    white; 16-bit/int images keep their top 8 bits, float images are min-max scaled.
    Raises ImageTooLarge or ImageError.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"image {source} is {width}x{height} = {width * height} pixels, "
                    f"over the limit of {max_pixels} (MAX_IMAGE_PIXELS)"
                )
            pixels = _to_rgb_array(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image {source} is too large to decode safely: {exc}") from None
    except Exception as exc:  # decoders raise many types on crafted input; all mean "corrupt"
        raise ImageError(f"could not decode image {source}: {type(exc).__name__}: {exc}"
                         ) from None
    if pixels.ndim != 3 or pixels.shape[2] != 3 or 0 in pixels.shape:
        raise ImageError(f"could not decode image {source}: unexpected shape {pixels.shape}")
    return pixels


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        values = np.asarray(img)
        if mode == "F":
            values = np.nan_to_num(values.astype(np.float64))
            lo, hi = float(values.min()), float(values.max())
            gray = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
        else:
            gray = np.clip(values.astype(np.int64), 0, 65535) >> 8
        gray = gray.astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        img = rgb.convert("RGB")
    elif mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)


class ImageLoader:
    """Fetches (with auth, limits and an on-disk cache) and decodes task images. Thread-safe."""

    def __init__(
        self,
        settings: Settings,
        session: requests.Session | None = None,
        auth: LabelStudioAuth | None = None,
    ) -> None:
        self._settings = settings
        self._session = session if session is not None else requests.Session()
        self._policy = AddressPolicy.create([settings.label_studio_url],
                                            settings.image_url_allowlist)
        guarded = GuardedAdapter(self._policy)
        self._session.mount("http://", guarded)
        self._session.mount("https://", guarded)
        if auth is None and settings.label_studio_url and settings.label_studio_api_key:
            auth = LabelStudioAuth(
                settings.label_studio_url,
                settings.label_studio_api_key,
                self._session,
                timeout_s=settings.fetch_timeout_s,
            )
        self._auth = auth
        base = settings.label_studio_url or (auth.base_url if auth else None)
        self._ls_base = base.rstrip("/") if base else None
        self._cache_dir = settings.cache_dir / "images"
        self._sweep_due = Countdown(_SWEEP_EVERY_WRITES)  # the first write, then every N

    def load(self, url: str, task_id: int | None = None) -> LoadedImage:
        """Fetch and decode ``url``; pixels are H x W x 3 uint8 RGB. Raises ImageError."""
        data, digest = self.load_bytes(url, task_id=task_id)
        return LoadedImage(pixels=self.decode(data, url), sha256=digest, source=url)

    def decode(self, data: bytes, url: str) -> np.ndarray:
        """``data`` (the bytes :meth:`load_bytes` read from ``url``) as H x W x 3 uint8 RGB,
        within MAX_IMAGE_PIXELS, for a caller that first checked it needs the pixels at
        all. Raises ImageError."""
        return decode_image(data, self._settings.max_image_pixels, _shown(url))

    def load_bytes(self, url: str, task_id: int | None = None) -> tuple[bytes, str]:
        """The raw file bytes of ``url`` and their sha256 hex digest. Raises ImageError.

        ``task_id`` is needed for cloud URIs (s3://, gs://, azure-blob://).
        """
        if not isinstance(url, str) or not url.strip():
            raise ImageError(f"image URL is empty or not a string: {url!r}")
        url = url.strip()
        try:
            data = self._read_local_file(url)
            if data is None:
                resolved = self._resolve(url, task_id)
                data = self._cache_get(resolved)
                if data is None:
                    data = self._fetch(resolved, _shown(url))
                    self._cache_put(resolved, data)
        except ValueError as exc:  # malformed URL (bad port, unbalanced IPv6 bracket, …)
            raise ImageError(f"image URL is malformed: {exc}") from None
        return data, hashlib.sha256(data).hexdigest()

    # -- resolution ---------------------------------------------------------------------

    def _need_ls_base(self, url: str) -> str:
        if not self._ls_base:
            raise ImageError(
                f"image URL {_shown(url)} refers to Label Studio; LABEL_STUDIO_URL is needed"
            )
        return self._ls_base

    def _resolve(self, url: str, task_id: int | None) -> str:
        """The absolute http(s) URL to download ``url`` from."""
        if url.startswith("/"):
            return self._need_ls_base(url) + url
        scheme = urlsplit(url).scheme.lower()
        if scheme in ("http", "https"):
            return url
        if scheme in CLOUD_SCHEMES:
            base = self._need_ls_base(url)
            if task_id is None:
                raise ImageError(f"cloud storage URI {_shown(url)} needs the task id to presign")
            # Label Studio decodes fileuri with base64.urlsafe_b64decode (falls back to unquote).
            fileuri = base64.urlsafe_b64encode(url.encode("utf-8")).decode("ascii")
            return f"{base}/tasks/{int(task_id)}/presign/?fileuri={quote(fileuri, safe='')}"
        raise ImageNotAllowed(f"image URL {_shown(url)}: scheme {scheme!r} is not supported")

    def _read_local_file(self, url: str) -> bytes | None:
        """Bytes of a Label Studio file that is also on this machine, else None: a
        ``/data/local-files/?d=…`` file under LOCAL_FILES_DOCUMENT_ROOT, or a
        ``/data/upload/…`` file under UPLOAD_DIR."""
        parts = urlsplit(url)
        on_ls = url.startswith("/") or (
            self._ls_base is not None and url_origin(url) == url_origin(self._ls_base)
        )
        if not on_ls:
            return None
        path = parts.path.rstrip("/")
        if path == _LOCAL_FILES_PATH and self._settings.local_files_document_root is not None:
            rel = (parse_qs(parts.query).get("d") or [""])[0]
            if not rel:
                raise ImageError(f"local-files URL {_shown(url)} has no ?d= path")
            return self._read_under(self._settings.local_files_document_root, rel, url)
        if path.startswith(_UPLOAD_PREFIX) and self._settings.upload_dir is not None:
            return self._read_under(self._settings.upload_dir,
                                    unquote(path[len(_UPLOAD_PREFIX):]), url)
        return None

    def _read_under(self, root: Path, rel: str, url: str) -> bytes | None:
        """``root / rel`` if it is a file inside ``root`` (symlinks resolved first), None if
        it does not exist here (the caller falls back to HTTP)."""
        try:
            root = root.resolve()
            path = (root / rel).resolve()  # follows symlinks, so they are checked too
        except (OSError, ValueError, RuntimeError):  # NUL byte, symlink loop, …
            raise ImageNotAllowed(f"image URL {_shown(url)} has an invalid path") from None
        if not path.is_relative_to(root):
            raise ImageNotAllowed(f"image URL {_shown(url)} points outside {root}")
        if not path.is_file():
            return None  # not mounted here: fall back to HTTP through Label Studio
        try:
            size = path.stat().st_size
            if size > self._settings.max_image_bytes:
                raise self._too_many_bytes(url, size)
            return path.read_bytes()
        except OSError as exc:
            raise ImageError(f"could not read {_shown(url)}: {exc.strerror}") from None

    # -- download -----------------------------------------------------------------------

    def _too_many_bytes(self, url: str, size: int | str) -> ImageTooLarge:
        limit = self._settings.max_image_bytes
        return ImageTooLarge(
            f"image {_shown(url)} has {size} bytes, over {limit} (MAX_IMAGE_BYTES)"
        )

    def _fetch(self, url: str, shown: str) -> bytes:
        """GET ``url`` following up to MAX_REDIRECTS redirects by hand; auth only to LS."""
        current, redirects, retried_401 = url, 0, False
        auth_allowed = True  # once the chain leaves Label Studio, never send credentials again
        while True:
            on_ls = self._auth is not None and self._auth.is_label_studio_url(current)
            auth_allowed = auth_allowed and on_ls
            headers = self._auth.headers() if (auth_allowed and self._auth) else {}
            self._policy.check_url(current, shown)
            try:
                resp = self._session.get(
                    current,
                    headers=headers,
                    timeout=self._settings.fetch_timeout_s,
                    stream=True,
                    allow_redirects=False,
                )
            except AddressRefused as exc:
                raise ImageNotAllowed(f"image {shown}: {exc}") from None
            except requests.Timeout:
                raise ImageError(f"timed out fetching image {shown}") from None
            except requests.RequestException as exc:
                raise ImageError(f"could not fetch image {shown}: {type(exc).__name__}") from None
            with resp:
                if resp.is_redirect:
                    redirects += 1
                    if redirects > MAX_REDIRECTS:
                        raise ImageError(f"too many redirects fetching image {shown}")
                    current = urljoin(current, resp.headers["location"])
                    if url_origin(current) is None:
                        raise ImageNotAllowed(f"image {shown} redirects to a non-http(s) URL")
                    continue
                if resp.status_code == 401 and headers and not retried_401 and self._auth:
                    retried_401 = True
                    self._auth.invalidate()
                    continue
                if resp.status_code == 404:
                    raise ImageError(f"image {shown} not found (HTTP 404)")
                if resp.status_code != 200:
                    raise ImageError(f"fetching image {shown} failed: HTTP {resp.status_code}")
                return self._read_body(resp, shown)

    def _read_body(self, resp: requests.Response, shown: str) -> bytes:
        limit = self._settings.max_image_bytes
        length = resp.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise self._too_many_bytes(shown, int(length))
        deadline = time.monotonic() + self._settings.fetch_timeout_s
        buf = bytearray()
        try:
            for chunk in resp.iter_content(_CHUNK):
                buf += chunk
                if len(buf) > limit:
                    raise self._too_many_bytes(shown, f"more than {limit}")
                if time.monotonic() > deadline:
                    raise ImageError(f"timed out downloading image {shown}")
        except requests.RequestException as exc:
            raise ImageError(f"download of image {shown} failed: {type(exc).__name__}") from None
        return bytes(buf)

    # -- on-disk cache ------------------------------------------------------------------

    def _cache_path(self, resolved: str) -> Path:
        return self._cache_dir / (hashlib.sha256(resolved.encode("utf-8")).hexdigest() + ".img")

    def _cache_get(self, resolved: str) -> bytes | None:
        if self._settings.image_cache_bytes <= 0:
            return None
        path = self._cache_path(resolved)
        try:
            if path.stat().st_size > self._settings.max_image_bytes:
                return None
            data = path.read_bytes()
            os.utime(path)  # mtime = last use, so eviction is least-recently-used
        except OSError:  # missing, or evicted meanwhile
            return None
        return data

    def _cache_put(self, resolved: str, data: bytes) -> None:
        if not 0 < len(data) <= self._settings.image_cache_bytes:
            return
        path = self._cache_path(resolved)
        try:
            self._cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self._cache_dir)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            log.warning("could not write image cache file %s: %s", path, exc)
            return
        if self._sweep_due.due():
            self._sweep_cache()

    def _sweep_cache(self) -> None:
        """Delete least-recently-used files until the cache fits ``image_cache_bytes``."""
        entries: list[tuple[float, int, str]] = []
        now = time.time()
        try:
            with os.scandir(self._cache_dir) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if entry.name.startswith(".tmp-"):
                        if now - st.st_mtime > _STALE_TMP_S:
                            with contextlib.suppress(OSError):
                                os.unlink(entry.path)
                    elif entry.name.endswith(".img"):
                        entries.append((st.st_mtime, st.st_size, entry.path))
        except OSError as exc:
            log.warning("could not scan image cache %s: %s", self._cache_dir, exc)
            return
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self._settings.image_cache_bytes:
                break
            try:
                os.unlink(path)
            except OSError:
                continue
            total -= size
