"""Verified downloads against a local HTTP server on 127.0.0.1: good and bad hashes, a truncated
body, progress, no overwrite, and nothing half-written left behind on any failure."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from layerfusion_core.files import known as model_files
from layerfusion_core.files.downloads import (
    DownloadError,
    HashMismatchError,
    IncompleteDownloadError,
    WrongBodyError,
    download_file,
    download_verified,
    expected_sha256_from_headers,
    hub_file_info,
    hub_sha256,
)

BODY = bytes(range(256)) * 400  # 102,400 bytes
BODY_SHA = hashlib.sha256(BODY).hexdigest()
OTHER_SHA = hashlib.sha256(b"something else").hexdigest()
HTML_PAGE = b"<!DOCTYPE html><html><body>Not here!</body></html>\n"  # 51 bytes


def _safetensors_bytes() -> bytes:
    import torch
    from safetensors.torch import save

    return save({"w": torch.ones(64, 64)})


GOOD_SAFETENSORS = _safetensors_bytes()


@dataclass
class Route:
    body: bytes = BODY
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    declared_length: int | None = None  # Content-Length to announce (default: the real one)


@dataclass
class LocalServer:
    base: str
    routes: dict[str, Route]
    requests: list[tuple[str, str]]

    def url(self, path: str) -> str:
        return self.base + path


def _handler(routes: dict[str, Route], requests: list[tuple[str, str]]) -> type:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, with_body: bool) -> None:
            requests.append((self.command, self.path))
            route = routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            self.send_response(route.status)
            length = len(route.body) if route.declared_length is None else route.declared_length
            self.send_header("Content-Length", str(length))
            for name, value in route.headers.items():
                self.send_header(name, value)
            if route.declared_length is not None:
                self.send_header("Connection", "close")
            self.end_headers()
            if with_body:
                self.wfile.write(route.body)
                self.wfile.flush()
            if route.declared_length is not None:
                self.close_connection = True  # the body ends before the announced length

        def do_GET(self) -> None:
            self._answer(with_body=True)

        def do_HEAD(self) -> None:
            self._answer(with_body=False)

    return Handler


@pytest.fixture
def server() -> Iterator[LocalServer]:
    routes: dict[str, Route] = {
        "/file.bin": Route(headers={"ETag": f'"{BODY_SHA}"'}),
        "/plain.bin": Route(),
        "/wrong-etag.bin": Route(headers={"ETag": f'"{OTHER_SHA}"'}),
        "/truncated.bin": Route(body=BODY[:5000], declared_length=len(BODY)),
        "/html.safetensors": Route(body=HTML_PAGE, headers={"Content-Type": "text/html"}),
        "/html-sized.safetensors": Route(body=HTML_PAGE * 2000),
        "/good.safetensors": Route(body=GOOD_SAFETENSORS),
        "/resolve.bin": Route(
            body=b"", status=302, headers={"Location": "/file.bin", "X-Linked-Etag": f'"{BODY_SHA}"'}
        ),
    }
    requests: list[tuple[str, str]] = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(routes, requests))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield LocalServer(f"http://127.0.0.1:{httpd.server_address[1]}", routes, requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "layer_model"
    target.mkdir()
    return target


def test_downloads_with_the_right_hash(server: LocalServer, folder: Path) -> None:
    dest = download_file(server.url("/plain.bin"), folder / "model.safetensors", expected_sha256=BODY_SHA)
    assert dest == folder / "model.safetensors"
    assert dest.read_bytes() == BODY
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors"]


def test_hash_from_the_etag_header_is_checked(server: LocalServer, folder: Path) -> None:
    dest = download_file(server.url("/file.bin"), folder / "model.safetensors")
    assert dest.read_bytes() == BODY


def test_explicit_hash_is_case_insensitive(server: LocalServer, folder: Path) -> None:
    download_file(server.url("/plain.bin"), folder / "m.safetensors", expected_sha256=BODY_SHA.upper())
    assert (folder / "m.safetensors").read_bytes() == BODY


def test_wrong_hash_fails_and_leaves_nothing(server: LocalServer, folder: Path) -> None:
    with pytest.raises(HashMismatchError) as info:
        download_file(server.url("/plain.bin"), folder / "model.safetensors", expected_sha256=OTHER_SHA)
    assert OTHER_SHA in str(info.value) and BODY_SHA in str(info.value)
    assert list(folder.iterdir()) == []


def test_wrong_hash_announced_by_the_server_fails(server: LocalServer, folder: Path) -> None:
    with pytest.raises(HashMismatchError):
        download_file(server.url("/wrong-etag.bin"), folder / "model.safetensors")
    assert list(folder.iterdir()) == []


def test_explicit_hash_wins_over_the_header(server: LocalServer, folder: Path) -> None:
    download_file(server.url("/wrong-etag.bin"), folder / "model.safetensors", expected_sha256=BODY_SHA)
    assert (folder / "model.safetensors").read_bytes() == BODY


def test_truncated_body_fails_and_leaves_nothing(server: LocalServer, folder: Path) -> None:
    with pytest.raises(IncompleteDownloadError) as info:
        download_file(server.url("/truncated.bin"), folder / "model.safetensors", timeout=10)
    assert str(len(BODY)) in str(info.value)
    assert list(folder.iterdir()) == []


def test_http_error_fails_and_leaves_nothing(server: LocalServer, folder: Path) -> None:
    with pytest.raises(DownloadError, match="404"):
        download_file(server.url("/absent.bin"), folder / "model.safetensors")
    assert list(folder.iterdir()) == []


def test_unreachable_server_fails_and_leaves_nothing(folder: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match="failed"):
        download_file(f"http://127.0.0.1:{port}/x.bin", folder / "model.safetensors", timeout=5)
    assert list(folder.iterdir()) == []


def test_progress_is_reported_with_increasing_counts(server: LocalServer, folder: Path) -> None:
    calls: list[tuple[int, int | None]] = []
    download_file(
        server.url("/plain.bin"),
        folder / "model.safetensors",
        progress=lambda done, total: calls.append((done, total)),
        chunk_size=8192,
    )
    counts = [done for done, _ in calls]
    assert len(calls) >= len(BODY) // 8192
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert counts[-1] == len(BODY)
    assert {total for _, total in calls} == {len(BODY)}


def test_exception_from_progress_cancels_and_leaves_nothing(server: LocalServer, folder: Path) -> None:
    class Cancelled(Exception):
        pass

    def progress(done: int, total: int | None) -> None:
        if done > 20000:
            raise Cancelled

    with pytest.raises(Cancelled):
        download_file(server.url("/plain.bin"), folder / "m.safetensors", progress=progress, chunk_size=4096)
    assert list(folder.iterdir()) == []


def test_existing_file_is_not_overwritten(server: LocalServer, folder: Path) -> None:
    dest = folder / "model.safetensors"
    dest.write_bytes(b"mine")
    assert download_file(server.url("/plain.bin"), dest) == dest
    assert dest.read_bytes() == b"mine"
    assert server.requests == []


def test_overwrite_replaces_an_existing_file_only_when_verified(server: LocalServer, folder: Path) -> None:
    dest = folder / "model.safetensors"
    dest.write_bytes(b"mine")
    with pytest.raises(HashMismatchError):
        download_file(server.url("/plain.bin"), dest, expected_sha256=OTHER_SHA, overwrite=True)
    assert dest.read_bytes() == b"mine"
    download_file(server.url("/plain.bin"), dest, expected_sha256=BODY_SHA, overwrite=True)
    assert dest.read_bytes() == BODY
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors"]


def test_missing_folder_is_created(server: LocalServer, tmp_path: Path) -> None:
    dest = tmp_path / "models" / "layer_model" / "model.safetensors"
    download_file(server.url("/plain.bin"), dest, expected_sha256=BODY_SHA)
    assert dest.read_bytes() == BODY


def test_malformed_expected_hash_is_refused(server: LocalServer, folder: Path) -> None:
    with pytest.raises(ValueError, match="64 hex"):
        download_file(server.url("/plain.bin"), folder / "m.safetensors", expected_sha256="abc")
    assert list(folder.iterdir()) == []
    assert server.requests == []


def test_hub_sha256_reads_the_linked_etag_without_following_the_redirect(server: LocalServer) -> None:
    assert hub_sha256(server.url("/resolve.bin")) == BODY_SHA
    assert server.requests == [("HEAD", "/resolve.bin")]


def test_hub_sha256_is_none_without_lfs_metadata(server: LocalServer) -> None:
    assert hub_sha256(server.url("/plain.bin")) is None
    assert hub_sha256(server.url("/absent.bin")) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"ETag": f'"{BODY_SHA}"'}, BODY_SHA),
        ({"etag": BODY_SHA.upper()}, BODY_SHA),
        ({"ETag": f'W/"{BODY_SHA}"'}, BODY_SHA),
        ({"X-Linked-Etag": f'"{BODY_SHA}"', "ETag": '"0123456789abcdef0123456789abcdef01234567"'}, BODY_SHA),
        ({"x-linked-etag": f'"{BODY_SHA}"'}, BODY_SHA),
        ({"ETag": '"0123456789abcdef0123456789abcdef01234567"'}, None),  # git blob id (sha1)
        ({"ETag": '"d41d8cd98f00b204e9800998ecf8427e"'}, None),  # md5-style CDN etag
        ({"ETag": f'"{BODY_SHA}-2"'}, None),  # multipart etag
        ({"ETag": '"' + "g" * 64 + '"'}, None),
        ({"Content-Length": "12"}, None),
        ({}, None),
    ],
)
def test_expected_sha256_from_headers(headers: dict[str, str], expected: str | None) -> None:
    assert expected_sha256_from_headers(headers) == expected


def test_expected_sha256_from_email_message_headers() -> None:
    from email.message import Message

    message = Message()
    message["X-Linked-ETag"] = f'"{BODY_SHA}"'
    assert expected_sha256_from_headers(message) == BODY_SHA


def test_pinned_table_is_empty_or_sha256_and_marked_unverified() -> None:
    for name, value in model_files.PINNED_SHA256_UNVERIFIED.items():
        assert name in model_files.BY_NAME
        assert value == "" or len(value) == 64
        assert model_files.pinned_sha256(name) == (value or None)
    assert "UNVERIFIED" in Path(model_files.__file__).read_text()


def test_an_html_page_answered_with_200_is_not_kept_as_the_model(server: LocalServer, folder: Path) -> None:
    """The 51-byte error page without a hash header, where a 208 MB decoder was expected."""
    assert len(HTML_PAGE) == 51
    dest = folder / "vae_transparent_decoder.safetensors"
    with pytest.raises(WrongBodyError, match=r"got 51 bytes, expected \d+-\d+ bytes"):
        download_verified(server.url("/html.safetensors"), dest, 208 * 1_000_000)
    assert list(folder.iterdir()) == []


def test_a_body_of_the_right_size_that_is_not_safetensors_is_not_kept(
    server: LocalServer, folder: Path
) -> None:
    dest = folder / "x.safetensors"
    with pytest.raises(WrongBodyError, match=r"not a safetensors file|not valid JSON|header"):
        download_verified(server.url("/html-sized.safetensors"), dest, len(HTML_PAGE) * 2000)
    assert list(folder.iterdir()) == []


def test_a_safetensors_body_of_about_the_known_size_is_kept(server: LocalServer, folder: Path) -> None:
    dest = folder / "x.safetensors"
    assert download_verified(server.url("/good.safetensors"), dest, len(GOOD_SAFETENSORS)) == dest
    assert dest.read_bytes() == GOOD_SAFETENSORS


def test_the_hub_exact_size_is_checked(server: LocalServer, folder: Path) -> None:
    dest = folder / "x.safetensors"
    size = len(GOOD_SAFETENSORS)
    with pytest.raises(WrongBodyError, match=f"expected {size + 1} bytes"):
        download_verified(server.url("/good.safetensors"), dest, size, exact_size=size + 1)
    assert list(folder.iterdir()) == []


def test_hub_file_info_reads_the_linked_size(server: LocalServer) -> None:
    server.routes["/sized.bin"] = Route(
        body=b"",
        status=302,
        headers={"Location": "/file.bin", "X-Linked-Etag": f'"{BODY_SHA}"', "X-Linked-Size": "102400"},
    )
    assert hub_file_info(server.url("/sized.bin")) == (BODY_SHA, 102400)
    assert hub_file_info(server.url("/plain.bin")) == (None, None)


def test_a_verified_hash_needs_no_approximate_size(server: LocalServer, folder: Path) -> None:
    dest = folder / "x.safetensors"
    sha = hashlib.sha256(GOOD_SAFETENSORS).hexdigest()
    download_verified(server.url("/good.safetensors"), dest, 743_000_000, expected_sha256=sha)
    assert dest.read_bytes() == GOOD_SAFETENSORS
