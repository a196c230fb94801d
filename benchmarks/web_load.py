"""Load the web view of a real daemon with many viewers and report what it costs.

Starts ``python -m pi_classifier run`` with the test-pattern source, no
screen and the web view on a free 127.0.0.1 port, measures display fps and
the daemon's RSS with no viewers, then with VIEWERS clients of /stream.mjpg
plus one client that reads one byte a second, for SECONDS. Everything stays
on 127.0.0.1 and ends within about a minute plus SECONDS. Exits 1 when a
target is missed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
TESTDATA = Path(
    os.environ.get("PI_CLASSIFIER_TESTDATA", REPO.parent / "shared" / "testdata")
)
START_TIMEOUT = 90.0
BASELINE_SECONDS = 5.0
WARMUP_SECONDS = 2.0
SAMPLE_PERIOD = 0.5
FPS_RATIO_TARGET = 0.9
VIEWER_TARGET = 0.9
RSS_TARGET_MB = 30.0


class Daemon:
    """The real pi-classifier daemon in a child process."""

    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.port = free_port()
        self.max_fps = args.max_fps
        config = folder / "config.yaml"
        config.write_text(
            f"model: {args.model}\n"
            f"threads: {args.threads}\n"
            "camera:\n  source: test-pattern\n  width: 640\n  height: 480\n"
            f"  fps: {args.camera_fps}\n"
            'display:\n  output: "null"\n'
            f"web:\n  enabled: true\n  listen: 127.0.0.1\n  port: {self.port}\n"
            f"  max_fps: {args.max_fps}\n  max_clients: {args.viewers + 8}\n"
        )
        env = dict(os.environ)
        if (TESTDATA / "models").is_dir():
            env.setdefault("PI_CLASSIFIER_MODEL_DIR", str(TESTDATA / "models"))
        self.log_path = folder / "daemon.log"
        with self.log_path.open("w") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pi_classifier", "run", "--config", str(config)],
                env=env, stdout=log_file, stderr=subprocess.STDOUT,
            )

    def url(self, path: str) -> str:
        """Return the address of a path of the web view."""
        return f"http://127.0.0.1:{self.port}{path}"

    def status(self) -> dict:
        """Return the daemon's /status.json."""
        with urllib.request.urlopen(self.url("/status.json"), timeout=5) as answer:
            return json.load(answer)

    def rss_mb(self) -> float:
        """Return the daemon's resident memory in MB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS line")

    def wait_ready(self) -> None:
        """Wait until the daemon shows frames, or exit with its log."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if self.status()["display_fps"] > 0:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        tail = self.log_path.read_text()[-2000:]
        raise SystemExit(f"the daemon did not come up; its log ends:\n{tail}")

    def stop(self) -> None:
        """Stop the daemon with SIGTERM, killing it if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


class Viewer(threading.Thread):
    """A client of /stream.mjpg that reads every part as fast as it can."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop_event = stop
        self.times: list[float] = []
        self.error: str | None = None

    def run(self) -> None:
        """Read the stream until told to stop."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: bench\r\n\r\n")
                with sock.makefile("rb", buffering=1 << 18) as stream:
                    self.read_parts(stream)
        except OSError as error:
            if not self.stop_event.is_set():
                self.error = str(error)

    def read_parts(self, stream) -> None:
        """Count each whole part of the stream as it arrives."""
        while stream.readline() not in (b"\r\n", b""):
            pass
        while not self.stop_event.is_set():
            length = 0
            while (line := stream.readline()) != b"\r\n":
                if not line:
                    return
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if len(stream.read(length + 2)) < length + 2:
                return
            self.times.append(time.monotonic())

    def fps(self, start: float, end: float) -> float:
        """Return the frames per second received between two moments."""
        count = sum(1 for moment in self.times if start <= moment <= end)
        return count / (end - start)


class SlowViewer(threading.Thread):
    """A client of /stream.mjpg that reads one byte a second."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop_event = stop
        self.received = b""
        self.closed = False

    def run(self) -> None:
        """Read one byte a second until told to stop or dropped."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(2)
        try:
            sock.connect(("127.0.0.1", self.port))
            sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: bench\r\n\r\n")
            while not self.stop_event.wait(1.0):
                byte = sock.recv(1)
                if not byte:
                    self.closed = True
                    return
                self.received += byte
        except OSError:
            self.closed = True
        finally:
            sock.close()

    def frames(self) -> int:
        """Return how many whole frames the bytes read contain."""
        return max(0, self.received.count(b"Content-Length:") - 1)


def sample(daemon: Daemon, seconds: float) -> tuple[list[float], list[float], list]:
    """Sample display fps, RSS and web figures every half second."""
    fps, rss, web = [], [], []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        status = daemon.status()
        fps.append(status["display_fps"])
        web.append((time.monotonic(), status.get("web", {})))
        rss.append(daemon.rss_mb())
        time.sleep(SAMPLE_PERIOD)
    return fps, rss, web


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def when_dropped(web: list, viewers: int, start: float) -> str:
    """When the server's viewer count first fell below all viewers."""
    for moment, figures in web:
        if moment > start + WARMUP_SECONDS and figures.get("viewers", 0) < viewers + 1:
            return f"dropped by the server after about {moment - start:.0f} s"
    return "still connected at the end"


def run(args: argparse.Namespace) -> bool:
    with tempfile.TemporaryDirectory() as folder:
        daemon = Daemon(args, Path(folder))
        try:
            daemon.wait_ready()
            return measure(daemon, args)
        finally:
            daemon.stop()


def measure(daemon: Daemon, args: argparse.Namespace) -> bool:
    time.sleep(WARMUP_SECONDS)
    idle_fps, idle_rss, _ = sample(daemon, BASELINE_SECONDS)
    base_fps, base_rss = mean(idle_fps), idle_rss[-1]

    stop = threading.Event()
    viewers = [Viewer(daemon.port, stop) for _ in range(args.viewers)]
    slow = SlowViewer(daemon.port, stop)
    for viewer in [*viewers, slow]:
        viewer.start()
    start = time.monotonic()
    loaded_fps, loaded_rss, web = sample(daemon, args.seconds)
    end = time.monotonic()
    stop.set()
    for viewer in [*viewers, slow]:
        viewer.join(5)

    return report(args, base_fps, base_rss, loaded_fps, loaded_rss, web,
                  viewers, slow, start, end)


def report(args, base_fps, base_rss, loaded_fps, loaded_rss, web,
           viewers, slow, start, end) -> bool:
    window = (start + WARMUP_SECONDS, end)
    fps_ratio = mean(loaded_fps[int(WARMUP_SECONDS / SAMPLE_PERIOD):]) / base_fps
    capped = min(args.max_fps, base_fps)
    rates = sorted(viewer.fps(*window) for viewer in viewers)
    growth = max(loaded_rss) - base_rss
    errors = [viewer.error for viewer in viewers if viewer.error]

    print(f"display fps: {base_fps:.1f} idle, ratio under load {fps_ratio:.2f} "
          f"(target >= {FPS_RATIO_TARGET}) {verdict(fps_ratio >= FPS_RATIO_TARGET)}")
    print(f"viewer fps: cap {capped:.1f}; min {rates[0]:.2f}, median "
          f"{rates[len(rates) // 2]:.2f}, max {rates[-1]:.2f} "
          f"(target >= {VIEWER_TARGET * capped:.1f}) "
          f"{verdict(rates[0] >= VIEWER_TARGET * capped)}")
    print("each viewer: " + " ".join(f"{rate:.1f}" for rate in rates))
    print(f"daemon RSS: {base_rss:.1f} MB idle, peak {max(loaded_rss):.1f} MB, "
          f"growth {growth:.1f} MB (target <= {RSS_TARGET_MB:.0f}) "
          f"{verdict(growth <= RSS_TARGET_MB)}")
    print(f"slow viewer: {len(slow.received)} bytes, {slow.frames()} whole frames, "
          f"{when_dropped(web, args.viewers, start)}")
    if errors:
        print(f"viewer errors: {len(errors)}, first: {errors[0]}")
    return (fps_ratio >= FPS_RATIO_TARGET and rates[0] >= VIEWER_TARGET * capped
            and growth <= RSS_TARGET_MB and not errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-fps", type=float, default=10.0)
    parser.add_argument("--camera-fps", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="mobilenet_v1_0.25_128_quant",
                        help="model name (looked up in the test data) or path")
    args = parser.parse_args()
    args.viewers = max(1, min(args.viewers, 200))
    args.seconds = max(5.0, min(args.seconds, 120.0))
    logging.basicConfig(level=logging.INFO)
    print(f"{args.viewers} viewers + 1 slow viewer for {args.seconds:.0f} s, "
          f"web.max_fps {args.max_fps}, camera {args.camera_fps} fps")
    sys.exit(0 if run(args) else 1)


if __name__ == "__main__":
    main()
