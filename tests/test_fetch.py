"""The verified download against a real HTTP server on 127.0.0.1, and the bar."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pi_classifier import models as store
from pi_classifier.errors import FetchError, ModelError
from pi_classifier.progress import ProgressBar

SMALL = store.KNOWN_MODELS["mobilenet_v1_0.25_128_quant"]
LABELS = store.KNOWN_MODELS["imagenet_labels"]

Route = Callable[[BaseHTTPRequestHandler], None]


class _Handler(BaseHTTPRequestHandler):
    """Answers each GET from the server's route table."""

    def do_GET(self):
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path.lstrip("/"))
        if route is None:
            self.send_error(404, "Not Found")
            return
        route(self)

    def log_message(self, format, *args):
        pass


def serve(data: bytes, *, length: bool = True) -> Route:
    """Answer 200 with these bytes, with or without Content-Length."""

    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        if length:
            handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return route


def drop_half(data: bytes, *, length: bool = True) -> Route:
    """Promise all the bytes, send half, then close the connection."""

    def route(handler):
        handler.send_response(200)
        if length:
            handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data[: len(data) // 2])
        handler.wfile.flush()
        handler.close_connection = True

    return route


def stall(data: bytes, release: threading.Event, *, after_headers: bool) -> Route:
    """Go quiet (until released) before the headers or after some bytes."""

    def route(handler):
        if after_headers:
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data[:1000])
            handler.wfile.flush()
        release.wait(10)

    return route


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.routes = {}
    httpd.requests = []
    httpd.release = threading.Event()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def closed_port() -> int:
    """A port that was bound and closed again, so nothing listens there."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path, closed_port):
    """Keep every test off the real network and out of /var/lib."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv(store.MODEL_URL_ENV, f"http://127.0.0.1:{closed_port}/")
    monkeypatch.setenv(store.MODEL_DIR_ENV, str(tmp_path / "env-models"))
    monkeypatch.setattr(store, "SYSTEM_MODEL_DIR", tmp_path / "nowhere" / "models")


@pytest.fixture
def small_bytes(models: Path) -> bytes:
    return (models / SMALL.filename).read_bytes()


def fetch_into(model, directory, url, **options):
    return store.fetch(model, directory, base_url=url, **options)


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_download_is_verified_and_reports_progress(server, tmp_path, small_bytes):
    server.routes[SMALL.filename] = serve(small_bytes)
    calls = []

    path = store.fetch(
        SMALL, tmp_path, base_url=server.url, progress=lambda d, t: calls.append((d, t))
    )

    assert path == tmp_path / SMALL.filename
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SMALL.sha256
    assert path.read_bytes() == small_bytes
    assert listing(tmp_path) == [SMALL.filename]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    done = [d for d, _ in calls]
    assert done[0] == 0
    assert done == sorted(done)
    assert len(calls) > 2
    assert calls[-1] == (len(small_bytes), len(small_bytes))
    assert {t for _, t in calls} == {len(small_bytes)}
    assert server.requests == [f"/{SMALL.filename}"]


def test_download_without_content_length_uses_pinned_size(
    server, tmp_path, small_bytes
):
    server.routes[SMALL.filename] = serve(small_bytes, length=False)
    calls = []

    path = store.fetch(
        SMALL, tmp_path, base_url=server.url, progress=lambda d, t: calls.append((d, t))
    )

    assert store.file_sha256(path) == SMALL.sha256
    assert calls[-1] == (SMALL.size, SMALL.size)


def test_checksum_mismatch_leaves_nothing(server, tmp_path, small_bytes):
    tampered = bytearray(small_bytes)
    tampered[len(tampered) // 2] ^= 0xFF
    server.routes[SMALL.filename] = serve(bytes(tampered))

    with pytest.raises(FetchError, match="checksum mismatch") as caught:
        store.fetch(SMALL, tmp_path, base_url=server.url)

    assert SMALL.sha256 in str(caught.value)
    assert hashlib.sha256(tampered).hexdigest() in str(caught.value)
    assert listing(tmp_path) == []


def test_other_file_of_other_size_is_refused(server, tmp_path, models):
    other = (models / LABELS.filename).read_bytes()
    server.routes[SMALL.filename] = serve(other)

    with pytest.raises(FetchError, match="not the expected file"):
        fetch_into(SMALL, tmp_path, server.url)

    assert listing(tmp_path) == []


def test_longer_stream_without_length_is_cut_off(server, tmp_path, small_bytes):
    server.routes[SMALL.filename] = serve(small_bytes + b"x" * 100, length=False)

    with pytest.raises(FetchError, match="more than the expected"):
        fetch_into(SMALL, tmp_path, server.url)

    assert listing(tmp_path) == []


def test_http_404_is_reported_with_the_url(server, tmp_path):
    url = server.url + SMALL.filename

    with pytest.raises(FetchError) as caught:
        fetch_into(SMALL, tmp_path, server.url)

    assert str(caught.value) == f"server answered 404 Not Found for {url}"
    assert listing(tmp_path) == []


@pytest.mark.parametrize("length", [True, False])
def test_connection_dropped_mid_file(server, tmp_path, small_bytes, length):
    server.routes[SMALL.filename] = drop_half(small_bytes, length=length)

    with pytest.raises(FetchError) as caught:
        fetch_into(SMALL, tmp_path, server.url)

    half = len(small_bytes) // 2
    assert f"stopped after {half} of {len(small_bytes)} bytes" in str(caught.value)
    assert listing(tmp_path) == []


def test_unreachable_server_says_how_to_fetch_by_hand(tmp_path, closed_port):
    base = f"http://127.0.0.1:{closed_port}/"

    with pytest.raises(FetchError) as caught:
        fetch_into(SMALL, tmp_path, base)

    message = str(caught.value)
    assert message.startswith(f"cannot reach 127.0.0.1:{closed_port}: ")
    assert str(tmp_path / SMALL.filename) in message
    assert base + SMALL.filename in message
    assert listing(tmp_path) == []


def test_name_lookup_failure_is_reported(tmp_path, monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)

    with pytest.raises(FetchError) as caught:
        fetch_into(SMALL, tmp_path, "http://models.example.invalid/")

    assert str(caught.value).startswith(
        "cannot reach models.example.invalid: name lookup failed "
        "(Name or service not known); put the file at "
    )
    assert listing(tmp_path) == []


@pytest.mark.parametrize("after_headers", [False, True])
def test_silent_server_times_out(server, tmp_path, small_bytes, after_headers):
    server.routes[SMALL.filename] = stall(
        small_bytes, server.release, after_headers=after_headers
    )

    with pytest.raises(FetchError, match=r"timed out after 0\.3 seconds"):
        fetch_into(SMALL, tmp_path, server.url, timeout=0.3)

    assert listing(tmp_path) == []


def test_keyboard_interrupt_from_progress_leaves_nothing(server, tmp_path, small_bytes):
    server.routes[SMALL.filename] = serve(small_bytes)
    seen = []

    def interrupt(done, total):
        seen.append(done)
        if done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetch_into(SMALL, tmp_path, server.url, progress=interrupt)

    assert 0 < seen[-1] < len(small_bytes)
    assert listing(tmp_path) == []


def test_cached_file_is_reused_without_network(server, tmp_path, small_bytes):
    target = tmp_path / SMALL.filename
    target.write_bytes(small_bytes)
    before = target.stat().st_mtime_ns

    path = fetch_into(SMALL, tmp_path, server.url)

    assert path == target
    assert server.requests == []
    assert target.stat().st_mtime_ns == before


def test_damaged_cached_file_is_replaced(server, tmp_path, small_bytes):
    (tmp_path / SMALL.filename).write_bytes(b"not a model")
    server.routes[SMALL.filename] = serve(small_bytes)

    path = fetch_into(SMALL, tmp_path, server.url)

    assert path.read_bytes() == small_bytes
    assert len(server.requests) == 1


def test_damaged_cached_file_is_gone_after_a_failed_download(server, tmp_path):
    (tmp_path / SMALL.filename).write_bytes(b"not a model")

    with pytest.raises(FetchError, match="404"):
        fetch_into(SMALL, tmp_path, server.url)

    assert listing(tmp_path) == []


def test_folder_that_cannot_be_created(server, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")

    with pytest.raises(FetchError, match="cannot write to"):
        fetch_into(SMALL, blocker / "models", server.url)

    assert server.requests == []


def test_download_creates_missing_folders(server, tmp_path, small_bytes):
    server.routes[SMALL.filename] = serve(small_bytes)

    path = fetch_into(SMALL, tmp_path / "deep" / "models", server.url)

    assert store.is_verified(path, SMALL)


def test_base_url_from_environment(server, tmp_path, small_bytes, monkeypatch):
    server.routes[SMALL.filename] = serve(small_bytes)
    monkeypatch.setenv(store.MODEL_URL_ENV, server.url.rstrip("/"))

    path = store.fetch(SMALL, tmp_path)

    assert store.is_verified(path, SMALL)
    assert server.requests == [f"/{SMALL.filename}"]


def test_file_url_mirror(tmp_path, models):
    path = fetch_into(SMALL, tmp_path, models.as_uri())

    assert store.is_verified(path, SMALL)
    assert listing(tmp_path) == [SMALL.filename]


def test_address_that_is_not_a_url(tmp_path):
    with pytest.raises(FetchError, match="not a valid download address"):
        fetch_into(SMALL, tmp_path, "no-scheme-here")


def test_old_leftovers_are_removed_and_fresh_ones_kept(server, tmp_path, small_bytes):
    old = tmp_path / f".{SMALL.filename}.part-old1"
    fresh = tmp_path / f".{SMALL.filename}.part-new1"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    hours_ago = time.time() - 2 * store.STALE_PART_SECONDS
    os.utime(old, (hours_ago, hours_ago))
    server.routes[SMALL.filename] = serve(small_bytes)

    fetch_into(SMALL, tmp_path, server.url)

    assert listing(tmp_path) == sorted([fresh.name, SMALL.filename])


def test_fetch_known_gets_model_and_labels(
    server, tmp_path, small_bytes, models, monkeypatch
):
    server.routes[SMALL.filename] = serve(small_bytes)
    server.routes[LABELS.filename] = serve((models / LABELS.filename).read_bytes())
    monkeypatch.setenv(store.MODEL_URL_ENV, server.url)
    labels_asked = []

    def progress_for(label):
        labels_asked.append(label)
        return None

    paths = store.fetch_known(SMALL.name, tmp_path / "out", progress_for=progress_for)

    out = tmp_path / "out"
    assert paths == [out / SMALL.filename, out / LABELS.filename]
    assert store.is_verified(paths[0], SMALL)
    assert store.is_verified(paths[1], LABELS)
    assert labels_asked == [SMALL.filename, LABELS.filename]


def test_fetch_known_unknown_name(tmp_path):
    with pytest.raises(ModelError, match=r"did you mean 'mobilenet_v2_1\.0_224_quant'"):
        store.fetch_known("mobilenet_v2_1.0_224", tmp_path)


def test_bar_on_a_pipe_writes_quarter_lines():
    stream = io.StringIO()
    bar = ProgressBar("model.tflite", stream=stream)

    for done in range(0, 4_000_001, 100_000):
        bar(done, 4_000_000)

    lines = stream.getvalue().splitlines()
    assert lines == [
        "model.tflite: 0% (0 kB of 4.0 MB)",
        "model.tflite: 25% (1.0 MB of 4.0 MB)",
        "model.tflite: 50% (2.0 MB of 4.0 MB)",
        "model.tflite: 75% (3.0 MB of 4.0 MB)",
        "model.tflite: 100% (4.0 MB of 4.0 MB)",
    ]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_on_a_terminal_redraws_one_line():
    stream = _Terminal()
    bar = ProgressBar("labels", stream=stream, width=10)

    for done in (0, 5_000, 10_000, 21_686):
        bar(done, 21_686)
    bar.close()

    text = stream.getvalue()
    assert text.count("\n") == 1
    assert text.endswith("\n")
    final = text.rstrip("\n").split("\r")[-1]
    assert final.strip() == "labels [##########] 100% 22 kB of 22 kB"
    assert "labels [##--------]  23% 5 kB of 22 kB" in text


def test_bar_with_unknown_total_prints_final_line_on_close():
    stream = io.StringIO()

    with ProgressBar("x", stream=stream) as bar:
        bar(1_500_000, None)
        bar(3_000_000, None)

    assert stream.getvalue() == "x: 3.0 MB\n"


def test_interrupted_bar_on_a_terminal_ends_its_line():
    stream = _Terminal()

    with ProgressBar("x", stream=stream) as bar:
        bar(100, 1000)

    assert stream.getvalue().endswith("\n")
    assert "10%" in stream.getvalue()


class _Broken(io.StringIO):
    def write(self, text):
        raise OSError(5, "Input/output error")

    def isatty(self):
        raise ValueError("closed")


def test_bar_never_raises():
    closed = io.StringIO()
    closed.close()

    for stream in (_Broken(), closed):
        bar = ProgressBar("x", stream=stream)
        bar(0, 10)
        bar(10, 10)
        bar(5, None)
        bar.close()


def test_bar_drives_a_real_download(server, tmp_path, small_bytes):
    server.routes[SMALL.filename] = serve(small_bytes)
    stream = io.StringIO()

    fetch_into(SMALL, tmp_path, server.url, progress=ProgressBar("m", stream=stream))

    assert stream.getvalue().splitlines()[0] == "m: 0% (0 kB of 526 kB)"
    assert stream.getvalue().splitlines()[-1] == "m: 100% (526 kB of 526 kB)"


def test_model_folder_that_is_a_file(server, tmp_path):
    blocker = tmp_path / "models"
    blocker.write_text("in the way")

    with pytest.raises(FetchError, match=f"^{blocker} is a file, not a folder$"):
        fetch_into(SMALL, blocker, server.url)

    assert server.requests == []
    assert blocker.read_text() == "in the way"


def test_folder_in_the_way_of_the_file(server, tmp_path, small_bytes):
    (tmp_path / SMALL.filename).mkdir()
    server.routes[SMALL.filename] = serve(small_bytes)

    with pytest.raises(FetchError, match="cannot write to"):
        fetch_into(SMALL, tmp_path, server.url)

    assert listing(tmp_path) == [SMALL.filename]
    assert (tmp_path / SMALL.filename).is_dir()
    assert server.requests == []
