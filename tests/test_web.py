"""The web view over real sockets on 127.0.0.1: routes, stream, limits, token."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import itertools
import json
import math
import re
import socket
import threading
import time

import cv2
import numpy as np
import pytest
from helpers import Feeder

from pi_classifier.config import WebConfig
from pi_classifier.errors import ConfigError
from pi_classifier.state import LiveState, ShownLabel
from pi_classifier.web import WebServer

PALETTE = [
    (0, 0, 255),
    (0, 255, 0),
    (255, 0, 0),
    (0, 255, 255),
    (255, 0, 255),
    (255, 255, 0),
    (40, 40, 40),
    (220, 220, 220),
]
TOKEN = "s3cret-Token_42"
WAIT = 10.0


def solid(colour, width=64, height=48):
    return np.full((height, width, 3), colour, np.uint8)


def nearest_colour(image):
    """Index in PALETTE of the picture's mean colour; fails if none is near."""
    mean = image.reshape(-1, 3).mean(axis=0)
    distances = [float(np.abs(mean - np.array(c)).sum()) for c in PALETTE]
    best = int(np.argmin(distances))
    assert distances[best] < 30, f"mean colour {mean} is near no published colour"
    return best


def decode(jpeg):
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "the body is not a decodable JPEG"
    return image


def wait_until(predicate, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail(f"gave up waiting: {what}")


def palette_frame(index):
    """Frame ``index`` of a feed cycling through the palette."""
    return solid(PALETTE[index % len(PALETTE)])


@pytest.fixture
def state():
    return LiveState(
        model="mobilenet_v2_1.0_224_quant", runtime="litert 2.3",
        source="test-pattern", display="null", worker_alive=True,
        labels=(ShownLabel(954, "banana", 0.87), ShownLabel(950, "orange", 0.05)),
        display_fps=29.5, inference_fps=12.25, inference_ms=81.5,
        frames_dropped=3, frames_skipped=17, temperature_c=51.5,
    )


@pytest.fixture
def start_server():
    servers = []

    def start(state, request_timeout=5.0, send_timeout=5.0, **config):
        config.setdefault("port", 0)
        config.setdefault("max_fps", 60.0)
        server = WebServer(
            WebConfig(**config), state,
            request_timeout=request_timeout, send_timeout=send_timeout,
        )
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        assert server.stop(5.0)


@pytest.fixture
def server(state, start_server):
    return start_server(state)


def fetch(server, path, method="GET", headers=None):
    connection = http.client.HTTPConnection(*server.address, timeout=WAIT)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        fields = {name.lower(): value for name, value in response.getheaders()}
        return response.status, fields, body
    finally:
        connection.close()


def raw_exchange(server, data):
    """Send raw bytes, read the answer to the end; return (status, answer)."""
    with socket.create_connection(server.address, timeout=WAIT) as sock:
        sock.sendall(data)
        answer = read_to_end(sock)
    return status_of(answer), answer


def read_to_end(sock):
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def status_of(answer):
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert match, f"not an HTTP response: {answer[:80]!r}"
    return int(match.group(1))


class MjpegReader:
    """A strict client of the multipart MJPEG stream over a plain socket."""

    def __init__(self, address, path="/stream.mjpg", receive_buffer=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(WAIT)
        self.sock.connect(address)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        self.file = None

    def read_head(self):
        self.file = self.sock.makefile("rb")
        self.status = status_of(self.file.readline())
        self.headers = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            self.headers[name.strip().lower()] = value.strip()
        kind, _, boundary = self.headers["content-type"].partition("; boundary=")
        assert kind == "multipart/x-mixed-replace"
        self.boundary = boundary.encode()
        return self

    def next_frame(self):
        assert self.file.readline() == b"--" + self.boundary + b"\r\n"
        fields = {}
        while (line := self.file.readline()) != b"\r\n":
            assert line.endswith(b"\r\n"), f"bad part header {line!r}"
            name, _, value = line.decode("latin-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        assert fields["content-type"] == "image/jpeg"
        length = int(fields["content-length"])
        body = self.file.read(length)
        assert len(body) == length
        assert self.file.read(2) == b"\r\n"
        return body

    def close(self):
        if self.file is not None:
            self.file.close()
        self.sock.close()


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/", "text/html; charset=utf-8"),
        ("/status.json", "application/json"),
        ("/metrics", "text/plain; version=0.0.4; charset=utf-8"),
        ("/healthz", "text/plain; charset=utf-8"),
        ("/snapshot.jpg", "image/jpeg"),
    ],
)
def test_each_route_answers_get_and_head_with_its_content_type(
    state, server, path, content_type
):
    with Feeder(state, palette_frame):
        wait_until(lambda: state.latest_frame()[1] is not None, "a first frame")
        status, fields, body = fetch(server, path)
        head_status, head_fields, head_body = fetch(server, path, "HEAD")
    assert (status, head_status) == (200, 200)
    assert fields["content-type"] == head_fields["content-type"] == content_type
    assert int(fields["content-length"]) == len(body) > 0
    assert head_body == b""
    assert fields["connection"] == "close"
    assert fields["cache-control"] == "no-store"


def test_stream_head_and_get_announce_multipart(state, server):
    status, fields, body = fetch(server, "/stream.mjpg", "HEAD")
    assert status == 200
    assert fields["content-type"].startswith("multipart/x-mixed-replace; boundary=")
    assert body == b""


def test_snapshot_is_the_newest_published_picture(state, server):
    for index in (2, 5, 0):
        state.publish_frame(solid(PALETTE[index], 96, 64))
        status, _, body = fetch(server, "/snapshot.jpg")
        assert status == 200
        image = decode(body)
        assert image.shape == (64, 96, 3)
        assert nearest_colour(image) == index


def test_snapshot_before_any_frame_is_503(server):
    status, fields, _ = fetch(server, "/snapshot.jpg")
    assert status == 503
    assert "retry-after" in fields


def test_stream_delivers_distinct_frames_between_boundaries(state, server):
    with Feeder(state, palette_frame, period=0.03):
        reader = MjpegReader(server.address).read_head()
        try:
            colours = [nearest_colour(decode(reader.next_frame())) for _ in range(8)]
        finally:
            reader.close()
    assert reader.status == 200
    changes = sum(1 for a, b in itertools.pairwise(colours) if a != b)
    assert len(set(colours)) >= 3
    assert changes >= 3


def test_each_frame_is_encoded_once_whatever_the_number_of_viewers(state, server):
    viewers = [MjpegReader(server.address).read_head() for _ in range(5)]
    try:
        for index in range(6):
            state.publish_frame(solid(PALETTE[index]))
            for viewer in viewers:
                assert nearest_colour(decode(viewer.next_frame())) == index
    finally:
        for viewer in viewers:
            viewer.close()
    published = state.latest_frame()[0]
    assert 0 < server.frames_encoded <= published


def test_encodes_stay_below_frames_published_with_five_free_running_viewers(
    state, server
):
    results = []

    def watch():
        reader = MjpegReader(server.address).read_head()
        try:
            results.append([reader.next_frame() for _ in range(6)])
        finally:
            reader.close()

    with Feeder(state, palette_frame, period=0.01) as feeder:
        threads = [threading.Thread(target=watch) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        published = feeder.published
    assert len(results) == 5
    assert 0 < server.frames_encoded <= published


def test_encoder_idles_while_nobody_watches(state, server):
    with Feeder(state, palette_frame, period=0.01) as feeder:
        wait_until(lambda: feeder.published >= 30, "thirty frames published")
        status, _, _ = fetch(server, "/status.json")
    assert status == 200
    assert server.frames_encoded == 0


def test_slow_reader_does_not_hold_back_a_fast_one(state, start_server):
    rng = np.random.default_rng(7)
    noise = [rng.integers(0, 256, (480, 640, 3), np.uint8) for _ in range(4)]
    server = start_server(state, send_timeout=1.0)
    with Feeder(state, lambda i: noise[i % 4], period=0.01):
        slow = MjpegReader(server.address, receive_buffer=4096)
        fast = MjpegReader(server.address).read_head()
        try:
            wait_until(lambda: server.viewers == 2, "both viewers connected")
            bodies = [fast.next_frame() for _ in range(20)]
            wait_until(lambda: server.viewers == 1, "the stalled viewer dropped")
            more = [fast.next_frame() for _ in range(5)]
        finally:
            fast.close()
            slow.close()
    digests = {hashlib.sha256(body).digest() for body in bodies + more}
    assert len(digests) >= 4
    assert all(decode(body).shape == (480, 640, 3) for body in more)


def test_status_json_is_the_status_with_web_figures(state, server):
    status, _, body = fetch(server, "/status.json")
    document = json.loads(body)
    expected = state.snapshot().to_dict()
    assert status == 200
    for key, value in expected.items():
        if key != "uptime_s":
            assert document[key] == value, key
    assert document["labels"][0] == {"index": 954, "label": "banana", "score": 0.87}
    assert document["model"] == "mobilenet_v2_1.0_224_quant"
    assert document["uptime_s"] >= 0
    assert document["web"]["max_fps"] == 60.0
    assert document["web"]["viewers"] == 0


def test_status_json_turns_nan_into_null(state, server):
    state.update(inference_ms=math.nan, temperature_c=None)
    _, _, body = fetch(server, "/status.json")
    document = json.loads(body)
    assert document["inference_ms"] is None
    assert document["temperature_c"] is None


def test_page_is_self_contained_and_phone_ready(server):
    status, fields, body = fetch(server, "/")
    page = body.decode()
    assert status == 200
    assert '<meta name="viewport"' in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page)
    for path in ("/stream.mjpg", "/snapshot.jpg", "/status.json"):
        assert path in page
    assert "default-src 'none'" in fields["content-security-policy"]


# --- token -----------------------------------------------------------------


@pytest.fixture
def guarded(state, start_server):
    state.update(last_frame=time.monotonic())
    state.publish_frame(solid(PALETTE[3]))
    return start_server(state, token=TOKEN)


@pytest.mark.parametrize(
    "path", ["/", "/status.json", "/metrics", "/snapshot.jpg", "/stream.mjpg", "/x"]
)
def test_token_is_required(guarded, path):
    status, fields, _ = fetch(guarded, path)
    assert status == 401
    assert fields["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/status.json?token=wrong", {}),
        (f"/status.json?token={TOKEN}x", {}),
        ("/status.json", {"Authorization": "Bearer wrong"}),
        ("/status.json", {"Authorization": f"Basic {TOKEN}"}),
        ("/status.json?token=", {}),
    ],
)
def test_wrong_token_is_refused(guarded, path, headers):
    assert fetch(guarded, path, headers=headers)[0] == 401


def test_token_in_header_or_query_is_accepted(guarded):
    by_header = fetch(guarded, "/status.json",
                      headers={"Authorization": f"Bearer {TOKEN}"})
    by_query = fetch(guarded, f"/snapshot.jpg?token={TOKEN}")
    assert by_header[0] == 200
    assert json.loads(by_header[2])["model"] == "mobilenet_v2_1.0_224_quant"
    assert by_query[0] == 200
    assert nearest_colour(decode(by_query[2])) == 3


def test_stream_with_token_flows(guarded):
    reader = MjpegReader(guarded.address, f"/stream.mjpg?token={TOKEN}").read_head()
    try:
        assert nearest_colour(decode(reader.next_frame())) == 3
    finally:
        reader.close()


def test_healthz_needs_no_token(guarded):
    status, _, body = fetch(guarded, "/healthz")
    assert (status, body) == (200, b"ok\n")


def test_token_is_compared_in_constant_time(guarded, monkeypatch):
    calls = []
    original = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert fetch(guarded, "/metrics?token=nope")[0] == 401
    assert fetch(guarded, f"/metrics?token={TOKEN}")[0] == 200
    assert (b"nope", TOKEN.encode()) in calls
    assert (TOKEN.encode(), TOKEN.encode()) in calls


# --- protocol limits --------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_other_methods_are_refused_with_allow(server, method):
    status, fields, _ = fetch(server, "/status.json", method)
    assert status == 405
    assert fields["allow"] == "GET, HEAD"


def test_unknown_path_is_404(server):
    assert fetch(server, "/etc/passwd")[0] == 404
    assert fetch(server, "/status.json/")[0] == 404


def test_oversized_request_line_is_414(server):
    line = b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert raw_exchange(server, line)[0] == 414


@pytest.mark.parametrize(
    "headers",
    [
        b"X-Big: " + b"a" * 20000 + b"\r\n",
        b"".join(b"X-%d: %s\r\n" % (i, b"b" * 4000) for i in range(12)),
        b"".join(b"X-%d: c\r\n" % i for i in range(150)),
    ],
    ids=["long-line", "large-head", "many-fields"],
)
def test_oversized_headers_are_431(server, headers):
    request = b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
    assert raw_exchange(server, request)[0] == 431


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"GET /\r\n\r\n", 400),
        (b"GET / HTTP/1.1 extra\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET status.json HTTP/1.1\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
    ],
)
def test_malformed_requests_are_refused(server, request_bytes, expected):
    assert raw_exchange(server, request_bytes)[0] == expected


def test_connections_beyond_max_clients_get_503_and_service_recovers(
    state, start_server
):
    state.publish_frame(solid(PALETTE[1]))
    server = start_server(state, max_clients=2)
    holders = [MjpegReader(server.address).read_head() for _ in range(2)]
    try:
        assert [holder.status for holder in holders] == [200, 200]
        refused = [fetch(server, "/status.json") for _ in range(5)]
        assert nearest_colour(decode(holders[0].next_frame())) == 1
    finally:
        for holder in holders:
            holder.close()
    assert {status for status, _, _ in refused} == {503}
    assert all("retry-after" in fields for _, fields, _ in refused)
    wait_until(lambda: server.clients == 0, "the held connections closed")
    assert fetch(server, "/status.json")[0] == 200


def test_a_silent_connection_is_closed_after_the_request_timeout(state, start_server):
    server = start_server(state, request_timeout=0.5)
    with socket.create_connection(server.address, timeout=WAIT) as sock:
        sock.sendall(b"GET /status.json HTTP/1.1\r\nHost: x\r\n")
        answer = read_to_end(sock)
    assert status_of(answer) == 408


def test_a_trickling_client_is_cut_off(state, start_server):
    server = start_server(state, request_timeout=0.5)
    answer, cut_off = b"", False
    with socket.create_connection(server.address, timeout=WAIT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nX-Slow: ")
        sock.settimeout(0.05)
        for _ in range(200):  # up to ten seconds of one byte every 50 ms
            try:
                sock.sendall(b"a")
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                cut_off = True
                break
            answer += chunk
            if not chunk:
                cut_off = True
                break
    assert cut_off
    assert answer == b"" or status_of(answer) == 408
    wait_until(lambda: server.clients == 0, "the trickling connection closed")


# --- metrics ----------------------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_VALUE = r"(?:[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+)|NaN|[+-]Inf)"
_SAMPLE = re.compile(
    rf"^(?P<name>{_NAME})(?:\{{(?P<labels>{_LABEL}(?:,{_LABEL})*)?\}})?"
    rf" (?P<value>{_VALUE})(?: -?\d+)?$"
)
_ESCAPE = re.compile(r"\\(.)")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def parse_exposition(text):
    """Parse Prometheus text format 0.0.4 strictly; fail on any bad line."""
    assert text.endswith("\n")
    families = {}
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            _, kind, name, rest = line.split(" ", 3)
            assert re.fullmatch(_NAME, name)
            family = families.setdefault(name, {"samples": []})
            assert kind.lower() not in family, f"second {kind} for {name}"
            assert not family["samples"], f"{kind} after samples of {name}"
            if kind == "TYPE":
                assert rest in ("counter", "gauge", "histogram", "summary", "untyped")
            family[kind.lower()] = rest
            continue
        assert not line.startswith("#") or line.startswith("# "), line
        if line.startswith("#") or not line:
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        family = families.get(match["name"])
        assert family and "type" in family, f"sample before TYPE: {line!r}"
        labels = {
            key: _ESCAPE.sub(lambda m: "\n" if m[1] == "n" else m[1], value)
            for key, value in _PAIR.findall(match["labels"] or "")
        }
        family["samples"].append((labels, float(match["value"])))
    return families


def only_value(families, name):
    samples = families[name]["samples"]
    assert len(samples) == 1
    return samples[0][1]


def test_metrics_parse_as_prometheus_text_with_the_status_figures(state, server):
    state.update(last_frame=time.monotonic(), frames_shown=1234, frames_captured=1240)
    status, fields, body = fetch(server, "/metrics")
    families = parse_exposition(body.decode())
    assert status == 200
    assert fields["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    for name, family in families.items():
        assert "help" in family and "type" in family, name
        assert family["samples"], name
    assert families["pi_classifier_frames_shown_total"]["type"] == "counter"
    assert only_value(families, "pi_classifier_frames_shown_total") == 1234
    assert only_value(families, "pi_classifier_frames_dropped_total") == 3
    assert only_value(families, "pi_classifier_frames_skipped_total") == 17
    assert families["pi_classifier_display_fps"]["type"] == "gauge"
    assert only_value(families, "pi_classifier_display_fps") == 29.5
    assert only_value(families, "pi_classifier_inference_ms") == 81.5
    assert only_value(families, "pi_classifier_temperature_celsius") == 51.5
    assert only_value(families, "pi_classifier_healthy") == 1
    assert only_value(families, "pi_classifier_uptime_seconds") >= 0
    assert families["pi_classifier_top_score"]["samples"] == [
        ({"label": "banana"}, 0.87)
    ]
    info = families["pi_classifier_info"]["samples"][0][0]
    assert info["model"] == "mobilenet_v2_1.0_224_quant"


def test_metrics_escape_label_values_and_omit_unknown_temperature(state, server):
    state.update(
        temperature_c=None, worker_alive=False,
        labels=(ShownLabel(1, 'say "hi"\\\nbye', 0.5),),
    )
    families = parse_exposition(fetch(server, "/metrics")[2].decode())
    assert "pi_classifier_temperature_celsius" not in families
    assert only_value(families, "pi_classifier_healthy") == 0
    assert families["pi_classifier_top_score"]["samples"] == [
        ({"label": 'say "hi"\\\nbye'}, 0.5)
    ]


# --- health and lifecycle ---------------------------------------------------


def test_healthz_follows_frames_and_worker(state, server):
    state.update(last_frame=time.monotonic(), worker_alive=True)
    assert fetch(server, "/healthz")[:3:2] == (200, b"ok\n")
    state.update(worker_alive=False)
    assert fetch(server, "/healthz")[0] == 503
    state.update(worker_alive=True, last_frame=time.monotonic() - 60)
    assert fetch(server, "/healthz")[0] == 503
    state.update(last_frame=time.monotonic())
    assert fetch(server, "/healthz")[0] == 200


def web_threads():
    return [t for t in threading.enumerate() if t.name.startswith("web-")]


def test_stop_joins_threads_and_closes_sockets(state):
    state.publish_frame(solid(PALETTE[0]))
    server = WebServer(WebConfig(port=0), state)
    server.start()
    address = server.address
    viewer = MjpegReader(address).read_head()
    idle = socket.create_connection(address, timeout=WAIT)
    try:
        viewer.next_frame()
        assert len(web_threads()) == 2
        assert server.stop(timeout=5.0)
        assert web_threads() == []
        assert read_to_end(idle) == b""
        viewer.sock.settimeout(WAIT)
        # What is left is the boundary announcing the next part, then the end.
        assert viewer.file.read() == b"--" + viewer.boundary + b"\r\n"
    finally:
        viewer.close()
        idle.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=WAIT).close()


def test_port_in_use_is_a_config_error(state):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = WebServer(WebConfig(port=port), state)
        with pytest.raises(ConfigError, match=f"port {port}"):
            server.start()
    assert web_threads() == []


def test_address_the_network_has_not_given_yet_is_listened_on(state, caplog):
    # At boot DHCP may assign the configured address after the service
    # started: the web view listens anyway (IP_FREEBIND) and says so.
    server = WebServer(WebConfig(listen="192.0.2.1", port=0), state)
    server.start()
    try:
        assert server.address[0] == "192.0.2.1"
        assert server.address[1] > 0
    finally:
        assert server.stop(timeout=5.0)
    assert "192.0.2.1 is not an address of this machine (yet)" in caplog.text
    assert web_threads() == []
