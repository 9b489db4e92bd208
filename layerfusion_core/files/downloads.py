"""Verified downloads of model files: stream to a temporary file beside the destination,
hash while streaming, check the length and the SHA-256, then move into place atomically.

Pure standard library (urllib, hashlib); the host-side hook with a progress bar lives in
``nodes/downloads.py``.

Where the expected SHA-256 comes from: the Hugging Face hub answers a ``resolve`` URL of an
LFS file with a redirect whose ``X-Linked-Etag`` header is the file's SHA-256 (the
``ETag`` of a non-LFS file is a 40-hex git blob id, which is not a SHA-256 and is ignored).
``hub_sha256`` reads that header with a HEAD request that does not follow the redirect;
``download_file`` also accepts such a header on the download response itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int | None], None]
"""``progress(done_bytes, total_bytes)``; total is None when the server sent no length."""

DEFAULT_TIMEOUT = 60.0
CHUNK_SIZE = 1 << 20
PART_SUFFIX = ".part"
USER_AGENT = "ComfyUI-LayerFusion-downloader"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_HASH_HEADERS = ("X-Linked-Etag", "ETag")


class DownloadError(RuntimeError):
    """A download failed; nothing was left at the destination."""


class IncompleteDownloadError(DownloadError):
    """The body was shorter or longer than the Content-Length the server announced."""


class HashMismatchError(DownloadError):
    """The downloaded bytes do not have the expected SHA-256."""


class WrongBodyError(DownloadError):
    """The body is not the expected file: wrong size, or it does not parse as one."""


def normalise_sha256(value: str) -> str | None:
    """``value`` as 64 lowercase hex digits, or None when it is not a SHA-256 (quotes and a
    weak-validator ``W/`` prefix are stripped first)."""
    text = value.strip()
    if text[:2] in ("W/", "w/"):
        text = text[2:]
    text = text.strip().strip('"').strip().lower()
    return text if _SHA256_RE.match(text) else None


def expected_sha256_from_headers(headers: Mapping[str, str] | Any) -> str | None:
    """The SHA-256 a response's headers announce, or None.

    Looks at ``X-Linked-Etag`` (the hub's header for LFS files), then ``ETag``, case-
    insensitively; accepts only a 64-hex value (optionally quoted / weak). ``headers`` is a
    mapping or an ``email.message.Message`` (what urllib returns).
    """
    get = getattr(headers, "get", None)
    if get is None:
        return None
    lowered = None
    for name in _HASH_HEADERS:
        value = get(name)
        if value is None:
            if lowered is None:
                lowered = {str(k).lower(): v for k, v in dict(headers).items()}
            value = lowered.get(name.lower())
        if isinstance(value, str):
            sha = normalise_sha256(value)
            if sha is not None:
                return sha
    return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        return None


def hub_file_info(url: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[str | None, int | None]:
    """(SHA-256, size in bytes) of the file behind a hub ``resolve`` URL from its LFS
    metadata (``X-Linked-Etag``, ``X-Linked-Size``; a HEAD request, redirect not followed);
    each None when the answer carries none or the request fails."""
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        with opener.open(request, timeout=timeout) as response:
            headers = response.headers
    except urllib.error.HTTPError as exc:  # a 3xx lands here when redirects are refused
        with contextlib.closing(exc):
            headers = exc.headers
    except (OSError, ValueError, http.client.HTTPException) as exc:
        log.warning("could not read the SHA-256 of %s: %s", url, exc)
        return None, None
    size = headers.get("X-Linked-Size") if headers is not None else None
    return expected_sha256_from_headers(headers), int(size) if size and size.isdigit() else None


def hub_sha256(url: str, timeout: float = DEFAULT_TIMEOUT) -> str | None:
    """SHA-256 of the file behind a hub ``resolve`` URL (``hub_file_info``), or None."""
    return hub_file_info(url, timeout)[0]


SIZE_TOLERANCE = 0.1  # the known sizes are rounded to MB: accept +-10 % (and 1 MB) without exact metadata


def download_verified(
    url: str,
    dest_path: str | os.PathLike[str],
    approximate_size: int,
    expected_sha256: str | None = None,
    exact_size: int | None = None,
    progress: ProgressCallback | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download a model file of about ``approximate_size`` bytes with every check we have.

    The SHA-256 (from the hub's metadata or a pinned table, see ``hub_file_info``) is
    checked when known, and so is ``exact_size``. Without a known hash the size must lie
    within +-10 % of ``approximate_size``, so that a body the hash cannot vouch for (an
    error page answered with 200) is refused. A ``.safetensors`` destination must parse as
    a whole safetensors file. Nothing is kept on failure.
    """
    from .checks import safetensors_problem

    size = None
    if exact_size is not None:
        size = size_between(exact_size, exact_size)
    elif expected_sha256 is None:
        slack = int(approximate_size * SIZE_TOLERANCE) + 1_000_000
        size = size_between(max(1, approximate_size - slack), approximate_size + slack)
    layout = safetensors_problem if str(dest_path).endswith(".safetensors") else None
    return download_file(
        url, dest_path, expected_sha256=expected_sha256, progress=progress, timeout=timeout,
        validate=all_of(size, layout),
    )  # fmt: skip


BodyCheck = Callable[[Path], "str | None"]
"""A check of a downloaded body: why it is not the expected file, or None."""


def size_between(low: int, high: int) -> BodyCheck:
    """A check that the body has ``low`` .. ``high`` bytes."""
    wanted = f"{low} bytes" if low == high else f"{low}-{high} bytes"

    def check(path: Path) -> str | None:
        size = path.stat().st_size
        return None if low <= size <= high else f"got {size} bytes, expected {wanted}"

    return check


def all_of(*checks: BodyCheck | None) -> BodyCheck:
    """The first problem any of ``checks`` finds (None entries are skipped)."""

    def check(path: Path) -> str | None:
        return next((problem for c in checks if c is not None and (problem := c(path)) is not None), None)

    return check


def _content_length(headers: Any) -> int | None:
    value = headers.get("Content-Length")
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 else None


def download_file(
    url: str,
    dest_path: str | os.PathLike[str],
    expected_sha256: str | None = None,
    progress: ProgressCallback | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    overwrite: bool = False,
    chunk_size: int = CHUNK_SIZE,
    validate: Callable[[Path], str | None] | None = None,
) -> Path:
    """Download ``url`` to ``dest_path`` and return the destination.

    An existing ``dest_path`` is kept and returned untouched unless ``overwrite``. The body
    streams into ``<dest>.<random>.part`` in the same folder while its SHA-256 is computed;
    a body that does not match Content-Length raises IncompleteDownloadError, a hash that
    differs from ``expected_sha256`` (or, when that is None, from a SHA-256 the response
    headers announce) raises HashMismatchError naming both. Only a verified file is moved
    into place (``os.replace``), and only when ``validate(tmp)`` (a check of the body's size
    or format, see ``size_between`` and ``all_of``) returns None, else WrongBodyError. On any failure, including an exception raised by
    ``progress`` (e.g. a user cancel), the temporary file is removed.
    """
    dest = Path(dest_path)
    if dest.exists() and not overwrite:
        log.info("%s already exists; not downloading it again", dest)
        return dest
    expected = None
    if expected_sha256:
        expected = normalise_sha256(expected_sha256)
        if expected is None:
            raise ValueError(f"expected_sha256 must be 64 hex digits, got {expected_sha256!r}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{dest.name}.", suffix=PART_SUFFIX, dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest, done, announced = _stream(url, out, progress, timeout, chunk_size, expected)
        actual = digest.hexdigest()
        expected = expected or announced
        if expected is not None and actual != expected:
            raise HashMismatchError(
                f"SHA-256 mismatch for {url}: expected {expected}, got {actual} ({done} bytes); "
                "the file was discarded"
            )
        problem = validate(tmp) if validate is not None else None
        if problem is not None:
            raise WrongBodyError(
                f"download of {url} is not the expected file: {problem}; the body was discarded"
            )
        if expected is None:
            log.warning("no SHA-256 known for %s; only its length and format were checked", url)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return dest


def _stream(
    url: str,
    out: Any,
    progress: ProgressCallback | None,
    timeout: float,
    chunk_size: int,
    expected: str | None,
) -> tuple[Any, int, str | None]:
    """Copy the body of ``url`` into ``out``; return (sha256 object, bytes, hash announced by
    the headers or None)."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    digest = hashlib.sha256()
    done = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            total = _content_length(response.headers)
            announced = None if expected else expected_sha256_from_headers(response.headers)
            while True:
                chunk = response.read(chunk_size)
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    except http.client.IncompleteRead as exc:
        done += len(exc.partial)
        raise IncompleteDownloadError(
            f"download of {url} stopped early: got {done} bytes, expected {done + (exc.expected or 0)}"
        ) from exc
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"download of {url} failed after {done} bytes: {exc}") from exc
    if total is not None and done != total:
        raise IncompleteDownloadError(
            f"download of {url} is incomplete: got {done} bytes, Content-Length said {total}"
        )
    return digest, done, announced
