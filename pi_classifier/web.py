"""The built-in web view: the live annotated picture, status and metrics over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import errno
import hmac
import importlib.resources
import json
import logging
import math
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from pi_classifier.config import WebConfig
from pi_classifier.errors import ConfigError, PiClassifierError
from pi_classifier.state import LiveState, Status

log = logging.getLogger(__name__)

#: Linux's IP_FREEBIND (Python names it only from 3.12): bind to an address
#: this machine does not have yet.
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)

FIRST_COMPLETED = asyncio.FIRST_COMPLETED
BOUNDARY = "pi-classifier-frame"
# Each part ends with the next part's boundary, so a client that splits the
# stream on boundaries can finish a part as soon as it has arrived.
PART_START = f"--{BOUNDARY}\r\n".encode()
PART_END = b"\r\n" + PART_START
ALLOWED_METHODS = ("GET", "HEAD")
# /healthz answers without the token: it tells only "ok" or "unhealthy", and
# watchdogs and load balancers probing it rarely can carry a secret.
OPEN_PATHS = frozenset({"/healthz"})
MAX_LINE = 8192
MAX_HEAD_BYTES = 32768
MAX_HEADERS = 100
MAX_REJECTING = 64
REJECT_TIMEOUT = 2.0
LINGER_BYTES = 1 << 20
STREAM_SEND_BUFFER = 256 * 1024
SNAPSHOT_TIMEOUT = 2.0
START_TIMEOUT = 5.0
ACCEPT_TURNS = 10
IDLE_POLL = 0.5
FRAME_WAIT = 5.0

_TOKEN_CHARS = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_VERSION = re.compile(r"^HTTP/(\d)\.(\d)$")
_SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)
_PAGE_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; img-src 'self' blob: data:; connect-src 'self'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Frame-Options", "DENY"),
)


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request head.

    Attributes:
        method: The request method, such as ``GET``.
        path: The path part of the target, such as ``/status.json``.
        query: The decoded query parameters.
        headers: The header fields, names in lower case.
        peer: The client's address, for the log.

    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    peer: str


@dataclass
class Response:
    """A complete (not streamed) HTTP response."""

    status: HTTPStatus
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


def _plain(status: HTTPStatus, text: str | None = None, **extra: str) -> Response:
    """Build a short plain-text response, with extra header fields."""
    body = (text if text is not None else status.phrase).encode() + b"\n"
    headers = [(name.replace("_", "-"), value) for name, value in extra.items()]
    return Response(status, body, headers=headers)


class FrameHub:
    """The newest JPEG of the annotated picture, shared by every viewer.

    The encoder thread puts frames in; the server's event loop takes them
    out. Only the newest frame is kept, so memory does not grow with the
    number or slowness of viewers.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jpeg: bytes | None = None
        self._sequence = 0
        self._viewers = 0
        self._snapshot_waiters = 0
        self.wake = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Tell the hub which event loop to wake when a frame arrives."""
        self._loop = loop
        self._changed = asyncio.Event()

    @property
    def viewers(self) -> int:
        """How many clients are watching the stream."""
        with self._lock:
            return self._viewers

    def wanted(self) -> bool:
        """Whether anybody is waiting for an encoded frame."""
        with self._lock:
            return self._viewers > 0 or self._snapshot_waiters > 0

    def add_demand(self, viewers: int = 0, snapshots: int = 0) -> None:
        """Count viewers or snapshot requests in or out, waking the encoder."""
        with self._lock:
            self._viewers += viewers
            self._snapshot_waiters += snapshots
        self.wake.set()

    def latest(self) -> tuple[int, bytes | None]:
        """Return (frame number, JPEG) of the newest encoded frame."""
        with self._lock:
            return self._sequence, self._jpeg

    def put(self, sequence: int, jpeg: bytes) -> None:
        """Store a newly encoded frame and wake its waiters (any thread)."""
        with self._lock:
            self._sequence, self._jpeg = sequence, jpeg
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(self._announce)

    def _announce(self) -> None:
        """Wake every coroutine waiting for a frame (event loop only)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def next_frame(self, after: int) -> tuple[int, bytes]:
        """Wait for an encoded frame numbered above ``after``."""
        while True:
            sequence, jpeg = self.latest()
            if sequence > after and jpeg is not None:
                return sequence, jpeg
            await self._changed.wait()


class JpegEncoder:
    """Encodes the newest published frame to JPEG on a thread of its own.

    It encodes each frame at most once, at most ``max_fps`` times a second,
    and only while a viewer or a snapshot request is waiting.
    """

    def __init__(
        self, state: LiveState, hub: FrameHub, max_fps: float, quality: int
    ) -> None:
        self._state = state
        self._hub = hub
        self._interval = 1.0 / max_fps
        self._params = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames_encoded = 0

    def start(self) -> None:
        """Start the encoder thread."""
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="web-jpeg-encoder", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Stop the thread; return whether it ended within ``timeout`` s."""
        self._stop.set()
        self._hub.wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        """Encode frames while they are wanted, until stopped."""
        last, next_time = 0, 0.0
        while not self._stop.is_set():
            if not self._hub.wanted():
                self._hub.wake.wait(IDLE_POLL)
                self._hub.wake.clear()
                continue
            delay = next_time - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
                continue
            sequence, image = self._state.wait_frame(last, timeout=IDLE_POLL)
            if image is None or sequence <= last:
                continue
            last, next_time = sequence, self._next_slot(next_time)
            self._encode(sequence, image)

    def _next_slot(self, slot: float) -> float:
        """Return when the next encode may start, given this one's slot.

        Slots follow a fixed period rather than "now + period", so frames
        that arrive a little late (a 30 fps source under a 10 fps cap) do not
        lower the rate below the cap; two encodes are never closer than half
        a period, and a long pause earns no burst.
        """
        now = time.monotonic()
        return max(slot + self._interval, now + self._interval / 2)

    def _encode(self, sequence: int, image: np.ndarray) -> None:
        """Encode one frame and hand it to the hub."""
        try:
            ok, buffer = cv2.imencode(".jpg", image, self._params)
        except cv2.error as error:
            log.warning("cannot encode frame %d as JPEG: %s", sequence, error)
            return
        if not ok:
            log.warning("cannot encode frame %d as JPEG", sequence)
            return
        self.frames_encoded += 1
        self._hub.put(sequence, buffer.tobytes())


def _finite(value: Any) -> Any:
    """Replace NaN and infinities, which JSON cannot carry, with None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def status_document(status: Status, web: dict[str, Any]) -> dict[str, Any]:
    """Build the /status.json document.

    Args:
        status: The classifier's status.
        web: Figures of the web view itself (viewers, frame cap, encodes).

    Returns:
        ``status.to_dict()`` with a ``web`` section, safe for JSON.

    """
    data = status.to_dict()
    data["web"] = web
    return _finite(data)


def _metric_value(value: float) -> str:
    """Format a sample value the way the Prometheus text format spells it."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _label_value(text: str) -> str:
    """Escape a label value for the Prometheus text format."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _metric(
    name: str, kind: str, help_text: str, value: float, labels: str = ""
) -> Iterator[str]:
    """Yield the HELP, TYPE and sample lines of one metric."""
    yield f"# HELP pi_classifier_{name} {help_text}"
    yield f"# TYPE pi_classifier_{name} {kind}"
    yield f"pi_classifier_{name}{labels} {_metric_value(value)}"


def _status_metrics(status: Status) -> Iterator[str]:
    """Yield the metrics that come from the classifier's status."""
    yield from _metric("up", "gauge", "Whether the classifier is running.", 1)
    yield from _metric(
        "healthy", "gauge", "Whether frames flow and the worker is alive.",
        status.healthy(),
    )
    yield from _metric(
        "worker_alive", "gauge", "Whether the inference worker thread runs.",
        status.worker_alive,
    )
    yield from _metric(
        "display_fps", "gauge", "Frames shown per second.", status.display_fps
    )
    yield from _metric(
        "inference_fps", "gauge", "Frames classified per second.",
        status.inference_fps,
    )
    yield from _metric(
        "inference_ms", "gauge", "Time of the last classification in ms.",
        status.inference_ms,
    )
    yield from _metric(
        "latency_ms", "gauge", "From capture to labels on screen in ms.",
        status.latency_ms,
    )
    yield from _metric(
        "uptime_seconds", "gauge", "Seconds since the classifier started.",
        round(status.uptime_s, 3),
    )


def _counter_metrics(status: Status) -> Iterator[str]:
    """Yield the frame counters of the classifier."""
    counters = (
        ("captured", "Frames the source delivered.", status.frames_captured),
        ("shown", "Frames written to the display.", status.frames_shown),
        ("dropped", "Frames the display path failed to show.", status.frames_dropped),
        ("skipped", "Frames the worker skipped while busy.", status.frames_skipped),
    )
    for name, help_text, value in counters:
        yield from _metric(f"frames_{name}_total", "counter", help_text, value)


def _optional_metrics(status: Status) -> Iterator[str]:
    """Yield the metrics that exist only when known: temperature, top label."""
    if status.temperature_c is not None:
        yield from _metric(
            "temperature_celsius", "gauge", "SoC temperature.", status.temperature_c
        )
    if status.labels:
        top = status.labels[0]
        yield from _metric(
            "top_score", "gauge", "Score of the label shown first.",
            top.score, f'{{label="{_label_value(top.label)}"}}',
        )
    info = ",".join(
        f'{name}="{_label_value(getattr(status, name))}"'
        for name in ("model", "runtime", "source", "display")
    )
    yield from _metric(
        "info", "gauge", "The model, runtime, source and display in use.", 1,
        f"{{{info}}}",
    )


def _web_metrics(web: dict[str, Any]) -> Iterator[str]:
    """Yield the metrics of the web view itself."""
    yield from _metric(
        "web_viewers", "gauge", "Clients watching the live stream.", web["viewers"]
    )
    yield from _metric(
        "web_clients", "gauge", "Open connections to the web view.", web["clients"]
    )
    yield from _metric(
        "web_frames_encoded_total", "counter", "Frames encoded to JPEG.",
        web["frames_encoded"],
    )


def render_metrics(status: Status, web: dict[str, Any]) -> str:
    """Render the Prometheus text exposition format 0.0.4.

    Args:
        status: The classifier's status.
        web: Figures of the web view itself (viewers, clients, encodes).

    Returns:
        The exposition, one metric family after another, ending in a newline.

    """
    lines = [
        *_status_metrics(status),
        *_counter_metrics(status),
        *_optional_metrics(status),
        *_web_metrics(web),
    ]
    return "\n".join(lines) + "\n"


def _parse_request_line(line: bytes) -> tuple[str, str] | HTTPStatus:
    """Split the request line into method and target, or name what is wrong."""
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3 or not _TOKEN_CHARS.match(parts[0]):
        return HTTPStatus.BAD_REQUEST
    method, target, version = parts
    match = _VERSION.match(version)
    if match is None:
        return HTTPStatus.BAD_REQUEST
    if match.group(1) != "1":
        return HTTPStatus.HTTP_VERSION_NOT_SUPPORTED
    if not target or any(ord(char) < 0x21 or ord(char) > 0x7E for char in target):
        return HTTPStatus.BAD_REQUEST
    return method, target


def _parse_header(line: bytes) -> tuple[str, str] | None:
    """Split one header line into (lower-case name, value), or None if bad."""
    text = line.decode("latin-1").rstrip("\r\n")
    name, colon, value = text.partition(":")
    if not colon or not _TOKEN_CHARS.match(name):
        return None
    return name.lower(), value.strip(" \t")


async def _read_line(reader: asyncio.StreamReader) -> bytes | None:
    """Read one line up to the reader's limit; None if it is longer."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        return None


async def _read_headers(
    reader: asyncio.StreamReader,
) -> dict[str, str] | HTTPStatus:
    """Read header lines up to the blank line, within the size limits."""
    headers: dict[str, str] = {}
    total = 0
    for _ in range(MAX_HEADERS + 1):
        line = await _read_line(reader)
        if line is None:
            return HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
        total += len(line)
        if total > MAX_HEAD_BYTES:
            return HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
        if line in (b"\r\n", b"\n"):
            return headers
        parsed = _parse_header(line)
        if parsed is None:
            return HTTPStatus.BAD_REQUEST
        name, value = parsed
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


async def read_request(reader: asyncio.StreamReader, peer: str) -> Request | HTTPStatus:
    """Read and check one request head.

    Args:
        reader: The connection's stream, whose limit bounds each line.
        peer: The client's address, kept for the log.

    Returns:
        The request, or the error status to answer with.

    Raises:
        asyncio.IncompleteReadError: The client closed the connection early.

    """
    line = await _read_line(reader)
    if line is None:
        return HTTPStatus.REQUEST_URI_TOO_LONG
    parsed = _parse_request_line(line)
    if isinstance(parsed, HTTPStatus):
        return parsed
    headers = await _read_headers(reader)
    if isinstance(headers, HTTPStatus):
        return headers
    method, target = parsed
    parts = urlsplit(target)
    if not parts.path.startswith("/"):
        return HTTPStatus.BAD_REQUEST
    query = parse_qs(parts.query, keep_blank_values=True)
    return Request(method, parts.path, query, headers, peer)


def _head_bytes(status: HTTPStatus, headers: list[tuple[str, str]]) -> bytes:
    """Render the status line and header fields of a response."""
    lines = [f"HTTP/1.1 {status.value} {status.phrase}"]
    lines += [f"Date: {email.utils.formatdate(usegmt=True)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (*_SECURITY_HEADERS, *headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _load_page() -> bytes:
    """Read the web page that ships inside the package."""
    try:
        resource = importlib.resources.files("pi_classifier") / "web_page.html"
        return resource.read_bytes()
    except OSError as error:
        raise PiClassifierError(
            f"the web page is missing from the installed package ({error}); "
            "reinstall pi-classifier"
        ) from None


def _bind(listen: str, port: int) -> socket.socket:
    """Open the listening socket, turning failures into a ConfigError."""
    try:
        info = socket.getaddrinfo(
            listen, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, _, _, _, address = info[0]
        return _listen_on(family, address[:2], listen)
    except socket.gaierror as error:
        raise ConfigError(
            f"web.listen {listen!r} is not a known address ({error.strerror})"
        ) from None
    except OSError as error:
        raise ConfigError(_bind_failure(listen, port, error)) from None


def _listen_on(family: int, address: tuple[Any, ...], listen: str) -> socket.socket:
    """Listen on ``address``, also before the network has given it to us.

    At boot the service may start before DHCP has assigned the configured
    address. Instead of failing then, the socket is bound with IP_FREEBIND
    and answers as soon as the address arrives.
    """
    try:
        return socket.create_server(address, family=family, backlog=128)
    except OSError as error:
        if error.errno != errno.EADDRNOTAVAIL or not sys.platform.startswith("linux"):
            raise
    log.warning(
        "web.listen %s is not an address of this machine (yet); the web view "
        "answers once the network assigns it", listen,
    )
    server = socket.socket(family, socket.SOCK_STREAM)
    try:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        server.bind(address)
        server.listen(128)
    except OSError:
        server.close()
        raise
    return server


def _bind_failure(listen: str, port: int, error: OSError) -> str:
    """Say in one sentence why the web view cannot listen where configured."""
    where = f"the web view cannot listen on {listen} port {port}"
    if error.errno == errno.EADDRINUSE:
        return f"{where}: another program uses that port; set web.port to a free one"
    if error.errno == errno.EADDRNOTAVAIL:
        return f"{where}: web.listen is not an address of this machine"
    if error.errno == errno.EACCES:
        return f"{where}: ports below 1024 need root; set web.port to 1024 or above"
    return f"{where}: {error.strerror or error}"


class WebServer:
    """The read-only web view of a running classifier.

    Paths: ``/`` (the page), ``/stream.mjpg``, ``/snapshot.jpg``,
    ``/status.json``, ``/metrics`` (Prometheus) and ``/healthz``. With
    ``web.token`` set, all but ``/healthz`` need it as a Bearer header or
    ``?token=`` query parameter.

    One thread runs an asyncio event loop that serves every connection;
    another encodes the newest annotated frame to JPEG, once per frame
    whatever the number of viewers. Each response closes its connection
    (no keep-alive), so an idle client never holds a slot for long;
    ``web.max_clients`` counts open connections, stream viewers included.

    Args:
        config: The ``web`` section of the configuration.
        state: The classifier's live state to show.
        request_timeout: Seconds a client has to send its request head.
        send_timeout: Seconds a client may stall reading before it is dropped.

    """

    def __init__(
        self,
        config: WebConfig,
        state: LiveState,
        *,
        request_timeout: float = 10.0,
        send_timeout: float = 10.0,
    ) -> None:
        self._config = config
        self._state = state
        self._request_timeout = request_timeout
        self._send_timeout = send_timeout
        self._hub = FrameHub()
        self._encoder = JpegEncoder(
            state, self._hub, config.max_fps, config.jpeg_quality
        )
        self._page = b""
        self._token = config.token.encode() if config.token else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False
        self._clients = 0
        self._rejecting = 0
        self._address: tuple[str, int] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the server is bound to; valid after ``start()``."""
        if self._address is None:
            raise RuntimeError("the web server has not been started")
        return self._address

    @property
    def frames_encoded(self) -> int:
        """How many frames have been encoded to JPEG so far."""
        return self._encoder.frames_encoded

    @property
    def viewers(self) -> int:
        """How many clients are watching the live stream now."""
        return self._hub.viewers

    @property
    def clients(self) -> int:
        """How many connections are being served now (refused ones aside)."""
        return self._clients

    def start(self) -> None:
        """Bind the listening socket and start serving.

        Raises:
            ConfigError: The address cannot be listened on (port in use,
                address not of this machine, no permission).
            PiClassifierError: The web page is missing from the package.

        """
        self._page = _load_page()
        sock = _bind(self._config.listen, self._config.port)
        self._address = sock.getsockname()[:2]

        loop = asyncio.new_event_loop()
        self._hub.attach(loop)
        self._loop, self._closing = loop, False
        self._thread = threading.Thread(
            target=self._run_loop, name="web-server", daemon=True
        )
        self._thread.start()

        opening = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, sock=sock, limit=MAX_LINE), loop
        )
        try:
            self._server = opening.result(timeout=START_TIMEOUT)
        except BaseException:
            sock.close()
            self.stop(START_TIMEOUT)
            raise

        self._encoder.start()
        log.info("web view on http://%s:%d/", *self._address)

    def stop(self, timeout: float = 5.0) -> bool:
        """Close every connection and join both threads.

        Args:
            timeout: Seconds to wait in all for the threads to end.

        Returns:
            Whether every thread ended within the timeout.

        """
        deadline = time.monotonic() + timeout
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                asyncio.run_coroutine_threadsafe(self._shut_down(), loop)

        stopped = self._encoder.stop(max(0.0, deadline - time.monotonic()))
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
            stopped = stopped and not self._thread.is_alive()
        if not stopped:
            log.warning("the web view did not stop within %.1f s", timeout)
        return stopped

    def _run_loop(self) -> None:
        """Run the event loop until ``stop()`` ends it (the server thread)."""
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            loop.run_until_complete(
                asyncio.gather(*leftovers, return_exceptions=True)
            )
        finally:
            loop.close()

    async def _shut_down(self) -> None:
        """Close the listener and every connection, then end the loop."""
        self._closing = True
        try:
            if self._server is not None:
                await self._close_listener(self._server)
            for writer in list(self._writers):
                writer.transport.abort()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            asyncio.get_running_loop().stop()

    @staticmethod
    async def _close_listener(server: asyncio.Server) -> None:
        """Stop accepting, let accepted connections arrive, then close.

        asyncio (Python 3.11) leaks the socket of a connection that is still
        being set up when its server closes, so the listener is first taken
        off the loop and those connections reach ``_accept``, which closes
        them, a few loop turns later.
        """
        loop = asyncio.get_running_loop()
        for listener in server.sockets:
            loop.remove_reader(listener.fileno())
        for _ in range(ACCEPT_TURNS):
            await asyncio.sleep(0)
        server.close()

    def _web_figures(self) -> dict[str, Any]:
        """Figures of the web view itself, for status and metrics."""
        return {
            "viewers": self._hub.viewers,
            "clients": self._clients,
            "max_fps": self._config.max_fps,
            "frames_encoded": self._encoder.frames_encoded,
        }

    def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Take a new connection in and start serving it (event loop only)."""
        if self._closing:
            writer.transport.abort()
            return
        # Drain only returns once every byte is with the kernel, so closing
        # after it never cuts a response short.
        writer.transport.set_write_buffer_limits(high=0)
        self._writers.add(writer)
        task = asyncio.get_running_loop().create_task(self._on_connect(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_connect(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve one connection, or turn it away when there are too many."""
        try:
            await self._admit(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            log.debug("a web connection ended early")
        except Exception:
            log.warning("web request failed", exc_info=True)
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _admit(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Count the connection in, or answer 503 when the server is full."""
        if self._clients >= self._config.max_clients:
            await self._turn_away(reader, writer)
            return
        self._clients += 1
        try:
            await self._serve(reader, writer)
        finally:
            self._clients -= 1

    async def _turn_away(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Answer 503 to a connection over the limit, spending little on it."""
        if self._rejecting >= MAX_REJECTING:
            return
        self._rejecting += 1
        try:
            with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError):
                async with asyncio.timeout(REJECT_TIMEOUT):
                    await read_request(reader, "")
            log.warning("web view full (%d clients); answered 503", self._clients)
            response = _plain(
                HTTPStatus.SERVICE_UNAVAILABLE, "too many clients", Retry_After="5"
            )
            await self._send(writer, response, head_only=False)
            await self._linger(reader, writer)
        finally:
            self._rejecting -= 1

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Read one request and answer it."""
        peer = self._peer(writer)
        try:
            async with asyncio.timeout(self._request_timeout):
                request = await read_request(reader, peer)
        except TimeoutError:
            log.debug("web client %s sent no full request in time", peer)
            await self._send(writer, _plain(HTTPStatus.REQUEST_TIMEOUT), False)
            return
        if isinstance(request, HTTPStatus):
            log.debug("web client %s: bad request, answered %d", peer, request)
            await self._send(writer, _plain(request), head_only=False)
            await self._linger(reader, writer)
            return
        await self._answer(request, reader, writer)

    @staticmethod
    def _peer(writer: asyncio.StreamWriter) -> str:
        """Return the client's address as text."""
        peer = writer.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if peer else "?"

    async def _answer(
        self,
        request: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Route a well-formed request to its answer."""
        head_only = request.method == "HEAD"
        refusal = self._allowed(request)
        if refusal is None and request.path == "/stream.mjpg":
            log.debug("%s %s from %s: stream", request.method, request.path,
                      request.peer)
            await self._stream(reader, writer, head_only)
            return

        response = refusal or await self._route(request)
        log.debug("%s %s from %s: %d", request.method, request.path, request.peer,
                  response.status)
        await self._send(writer, response, head_only)

    def _allowed(self, request: Request) -> Response | None:
        """Return the refusal of a request's method or token, None if allowed."""
        if request.method not in ALLOWED_METHODS:
            allow = ", ".join(ALLOWED_METHODS)
            return _plain(HTTPStatus.METHOD_NOT_ALLOWED, Allow=allow)
        if request.path in OPEN_PATHS or self._authorized(request):
            return None
        return _plain(
            HTTPStatus.UNAUTHORIZED, "a token is needed",
            WWW_Authenticate='Bearer realm="pi-classifier"',
        )

    def _authorized(self, request: Request) -> bool:
        """Whether the request carries the token, compared in constant time."""
        if self._token is None:
            return True
        offered = list(request.query.get("token", []))
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            offered.append(credentials.strip())
        matches = [
            hmac.compare_digest(candidate.encode(), self._token)
            for candidate in offered
        ]
        return any(matches)

    async def _route(self, request: Request) -> Response:
        """Answer the paths that are not the stream."""
        if request.path == "/":
            headers = [*_PAGE_HEADERS]
            return Response(HTTPStatus.OK, self._page, "text/html; charset=utf-8",
                            headers)
        if request.path == "/snapshot.jpg":
            return await self._snapshot()
        if request.path == "/status.json":
            document = status_document(self._state.snapshot(), self._web_figures())
            body = json.dumps(document, allow_nan=False).encode()
            return Response(HTTPStatus.OK, body, "application/json")
        if request.path == "/metrics":
            text = render_metrics(self._state.snapshot(), self._web_figures())
            return Response(HTTPStatus.OK, text.encode(),
                            "text/plain; version=0.0.4; charset=utf-8")
        if request.path == "/healthz":
            if self._state.snapshot().healthy():
                return _plain(HTTPStatus.OK, "ok")
            return _plain(HTTPStatus.SERVICE_UNAVAILABLE, "unhealthy")
        return _plain(HTTPStatus.NOT_FOUND)

    async def _snapshot(self) -> Response:
        """Answer /snapshot.jpg with the JPEG of the newest frame."""
        target, image = self._state.latest_frame()
        if image is None:
            return _plain(HTTPStatus.SERVICE_UNAVAILABLE, "no picture yet",
                          Retry_After="1")
        sequence, jpeg = self._hub.latest()
        if sequence < target:
            self._hub.add_demand(snapshots=1)
            try:
                async with asyncio.timeout(SNAPSHOT_TIMEOUT):
                    sequence, jpeg = await self._hub.next_frame(target - 1)
            except TimeoutError:
                sequence, jpeg = self._hub.latest()
            finally:
                self._hub.add_demand(snapshots=-1)
        if jpeg is None:
            return _plain(HTTPStatus.SERVICE_UNAVAILABLE, "no picture yet",
                          Retry_After="1")
        return Response(HTTPStatus.OK, jpeg, "image/jpeg")

    async def _send(
        self, writer: asyncio.StreamWriter, response: Response, head_only: bool
    ) -> None:
        """Write a whole response, giving up after the send timeout."""
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *response.headers,
        ]
        writer.write(_head_bytes(response.status, headers))
        if not head_only:
            writer.write(response.body)
        async with asyncio.timeout(self._send_timeout):
            await writer.drain()

    async def _linger(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Read what the client still sends so closing does not reset it.

        Closing a socket with unread input makes the kernel send a reset,
        which can destroy the error response before the client reads it.
        """
        if writer.can_write_eof():
            writer.write_eof()
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(REJECT_TIMEOUT):
                received = 0
                while received < LINGER_BYTES:
                    data = await reader.read(65536)
                    if not data:
                        return
                    received += len(data)

    async def _stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head_only: bool,
    ) -> None:
        """Send the multipart MJPEG stream until the client leaves or stalls.

        Each part carries its Content-Length for parsers that want it and is
        followed at once by the next boundary. Chromium still shows a part
        only once the next part's header has arrived, so a browser lags one
        frame behind (1 / ``web.max_fps`` s while frames flow).
        """
        headers = [("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")]
        writer.write(_head_bytes(HTTPStatus.OK, headers))
        if head_only:
            async with asyncio.timeout(self._send_timeout):
                await writer.drain()
            return
        writer.write(PART_START)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SEND_BUFFER)
        self._hub.add_demand(viewers=1)
        gone = asyncio.ensure_future(self._wait_gone(reader))
        try:
            await self._send_frames(writer, gone)
        finally:
            gone.cancel()
            self._hub.add_demand(viewers=-1)

    async def _send_frames(
        self, writer: asyncio.StreamWriter, gone: asyncio.Future[None]
    ) -> None:
        """Send each newest frame in turn, skipping those a slow client missed."""
        # Start from the newest published frame: an older encoded one may be
        # long stale when nobody was watching.
        sent = self._state.latest_frame()[0] - 1
        while True:
            waiting = asyncio.ensure_future(self._hub.next_frame(sent))
            try:
                await asyncio.wait(
                    {waiting, gone}, timeout=FRAME_WAIT, return_when=FIRST_COMPLETED
                )
            finally:
                if not waiting.done():
                    waiting.cancel()
            if gone.done():
                return
            if not waiting.done() or waiting.cancelled():
                continue
            sent, jpeg = waiting.result()
            head = f"Content-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
            writer.writelines((head.encode(), jpeg, PART_END))
            try:
                async with asyncio.timeout(self._send_timeout):
                    await writer.drain()
            except TimeoutError:
                log.warning("dropped a stream viewer that read nothing for %.0f s",
                            self._send_timeout)
                raise

    @staticmethod
    async def _wait_gone(reader: asyncio.StreamReader) -> None:
        """Return when the client closes its side of the connection."""
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):
                pass
