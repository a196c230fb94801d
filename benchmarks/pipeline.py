"""Measure the live pipeline against its targets, side by side in one run.

Each measurement runs the real daemon code (LiveClassifier) in a child
process of its own: frames from the test-pattern source at 640x480 and
``--fps`` frames per second, classified by ``--model``, written into a
1920x1080 RGB565 framebuffer that is a file in /dev/shm with a fake sysfs
folder beside it (``framebuffer.SYSFS_ROOT`` is pointed at that folder in the
child, as the tests do). The same child measures the bare invoke time of its
own interpreter just before and just after, so every ratio compares figures
taken seconds apart on the same (shared, noisy) machine. The parent
reads the children's /proc/PID files for memory, open files and threads.

Phases, in this order: for each thread count, the live pipeline and then a
plain single-threaded reference loop (capture, classify, draw, show, all in
one thread); then a soak of the live pipeline with the source at
``--soak-fps``. Every target prints PASS or FAIL; the exit status is 1 when
one of the live pipeline or the soak fails (the reference loop's verdicts are
shown for comparison only). A phase during which other processes took more
than half of the machine's CPU is flagged, since its rates then say more
about them than about the pipeline.

Known limitations: the file-backed framebuffer lives in ordinary shared
memory, so its 4 MB count in the daemon's RSS where a real /dev/fb0 mapping
would not; and with the source at 30 fps the worker can classify at most 30
frames a second, so the inference target compares with the lower of the
source rate and the bare invoke rate (the plain ratio is printed too).
The live classifier counts a frame as dropped only when it was captured and
not shown, which its single display loop makes rare; frames the loop was too
late to take from the source are printed beside it as "behind the schedule".
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
TESTDATA = Path(
    os.environ.get("PI_CLASSIFIER_TESTDATA", REPO.parent / "shared" / "testdata")
)
SCREEN = (1920, 1080)
FRAME = (640, 480)
MODEL = "mobilenet_v2_1.0_224_quant"

DISPLAY_RATIO_TARGET = 0.95
INFERENCE_RATIO_TARGET = 0.85
LATENCY_FRAME_INTERVALS = 2
PEAK_RSS_TARGET_MB = 200.0
RSS_GROWTH_TARGET_MB = 5.0
SOAK_BASELINE_SECONDS = 60.0
#: Above this share of the machine used by other processes a phase is flagged.
BUSY_MACHINE_SHARE = 0.5

START_TIMEOUT = 120.0
FINISH_TIMEOUT = 60.0
APP_STOP_TIMEOUT = 10.0
TIMING_SAMPLES = 20000


# -- the child: one daemon, measured from inside ------------------------------


class TimedClassifier:
    """A classifier that counts and times each classification it makes.

    Everything else is passed through to the wrapped classifier, so the
    live classifier and its worker use it as they would the real one.

    Args:
        classifier: The loaded classifier.
        keep: How many timings to keep (the oldest are dropped).
    """

    def __init__(self, classifier: Any, keep: int) -> None:
        self._classifier = classifier
        self.calls = 0
        self.classify_ms: collections.deque[tuple[float, float]] = (
            collections.deque(maxlen=keep))
        self.invoke_ms: collections.deque[tuple[float, float]] = (
            collections.deque(maxlen=keep))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._classifier, name)

    def probabilities(self, image: Any, order: str = "bgr") -> Any:
        """Classify through the real classifier, recording the time taken."""
        started = time.monotonic()
        scores = self._classifier.probabilities(image, order)
        taken = (time.monotonic() - started) * 1000
        self.classify_ms.append((started, taken))
        self.invoke_ms.append((started, self._classifier.timing.invoke_ms))
        self.calls += 1
        return scores


def timed(function: Callable[..., Any], samples: collections.deque
          ) -> Callable[..., Any]:
    """Wrap a function so each call's (start, milliseconds) lands in samples."""
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return function(*args, **kwargs)
        finally:
            samples.append((started, (time.monotonic() - started) * 1000))

    return wrapper


def window_p50(samples: collections.deque, start: float, end: float) -> float:
    """The median of the timings that started inside [start, end]."""
    from pi_classifier.bench import percentile

    return percentile([ms for moment, ms in samples if start <= moment <= end], 50)


def proc_status_mb(pid: int | str, key: str) -> float:
    """One memory line (VmRSS, VmHWM) of /proc/PID/status, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def thread_cpu_seconds() -> dict[int, float]:
    """CPU seconds (user and system) used so far by each thread of this process."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            text = Path(f"/proc/self/task/{tid}/stat").read_text()
            fields = text.rsplit(")", 1)[1].split()
            seconds[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return seconds


def machine_cpu() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine since boot, /proc/stat ticks."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0]
    values = [int(value) for value in first.split()[1:9]]
    return sum(values) - values[3] - values[4], sum(values)


def cpu_split(first: dict[str, Any], last: dict[str, Any], span: float,
              named: dict[str, int | None]) -> dict[str, float]:
    """Per cent of one core used by named threads, the rest and other processes."""
    used = {tid: seconds - first["threads"].get(tid, 0.0)
            for tid, seconds in last["threads"].items()}
    split = {name: 100 * used.pop(tid, 0.0) / span for name, tid in named.items()}
    split["other_threads"] = 100 * sum(used.values()) / span
    busy = last["machine"][0] - first["machine"][0]
    total = last["machine"][1] - first["machine"][1]
    machine = 100 * (os.cpu_count() or 1) * busy / total if total else 0.0
    process = 100 * (last["cpu"] - first["cpu"]) / span
    split["other_processes"] = max(0.0, machine - process)
    return split


def child_config(spec: dict[str, Any]) -> Any:
    """The daemon configuration a child runs with."""
    from pi_classifier.config import parse_config

    return parse_config(
        f"model: {spec['model']}\nthreads: {spec['threads']}\n"
        f"camera:\n  source: test-pattern\n  width: {FRAME[0]}\n"
        f"  height: {FRAME[1]}\n  fps: {spec['fps']}\n"
        f"display:\n  output: framebuffer\n  device: {spec['device']}\n"
        "  hide_cursor: false\n"
    )


def bare_invoke_ms(classifier: Any, seconds: float) -> float:
    """The bare invoke p50 of this interpreter, from pi_classifier.bench."""
    from pi_classifier.bench import run_benchmark

    if seconds <= 0:
        return 0.0
    return run_benchmark(classifier, seconds)["invoke_ms_p50"]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition every 50 ms; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.05)


class PipelineRun:
    """The live classifier on a thread, with counters read around a window.

    Args:
        config: The daemon configuration.
        classifier: The (timed) classifier handed to the live classifier.
        instrument: Time the display loop's steps too.
    """

    def __init__(self, config: Any, classifier: TimedClassifier,
                 instrument: bool) -> None:
        from pi_classifier.app import LiveClassifier

        self.app = LiveClassifier(config, classifier=classifier)
        self.classifier = classifier
        self.errors: list[str] = []
        self.steps = {name: collections.deque(maxlen=TIMING_SAMPLES)
                      for name in ("step", "read", "present", "canvas", "overlay",
                                   "show")}
        if instrument:
            self._instrument()
        self.thread = threading.Thread(target=self._run, name="live", daemon=True)

    def _instrument(self) -> None:
        """Time the display loop's steps by wrapping them on this instance."""
        app = self.app
        app._step = timed(app._step, self.steps["step"])
        app._read_frame = timed(app._read_frame, self.steps["read"])
        app._present = timed(app._present, self.steps["present"])
        app._canvas = timed(app._canvas, self.steps["canvas"])
        app._overlay.draw = timed(app._overlay.draw, self.steps["overlay"])
        open_display = app._open_display

        def open_timed_display() -> None:
            open_display()
            app._display.show = timed(app._display.show, self.steps["show"])

        app._open_display = open_timed_display

    def _run(self) -> None:
        """The thread: run the live classifier until asked to stop."""
        try:
            self.app.run()
        except Exception as error:
            self.errors.append(f"{type(error).__name__}: {error}")

    def start(self) -> None:
        """Start the live classifier and wait for the first labels on screen."""
        self.thread.start()
        wait_until(lambda: bool(self.app.latencies) or not self.thread.is_alive(),
                   START_TIMEOUT, "the first labels on screen")
        if self.errors:
            raise RuntimeError(self.errors[0])

    def counters(self) -> dict[str, Any]:
        """The running totals, to subtract at both ends of a window."""
        status = self.app.state.snapshot()
        return {
            **cpu_counters(),
            "shown": status.frames_shown, "captured": status.frames_captured,
            "dropped": status.frames_dropped, "skipped": status.frames_skipped,
            "classified": self.classifier.calls, "latencies": len(self.app.latencies),
        }

    def stop(self) -> None:
        """Stop the live classifier and wait for it."""
        self.app.request_stop()
        self.thread.join(APP_STOP_TIMEOUT)
        if self.thread.is_alive():
            self.errors.append("the live classifier did not stop")

    def figures(self, first: dict[str, Any], last: dict[str, Any]
                ) -> dict[str, Any]:
        """What happened between two readings of the counters."""
        from pi_classifier.bench import percentile

        span = last["time"] - first["time"]
        latencies = list(self.app.latencies)[int(first["latencies"]):]
        window = (first["time"], last["time"])
        steps = {name: window_p50(samples, *window)
                 for name, samples in self.steps.items()}
        worker = self.app._worker._thread
        threads = {"display_loop": self.thread.native_id,
                   "worker": worker.native_id if worker else None}
        return {
            "cpu": cpu_split(first, last, span, threads),
            "seconds": span,
            "display_fps": (last["shown"] - first["shown"]) / span,
            "inference_fps": (last["classified"] - first["classified"]) / span,
            "shown": last["shown"] - first["shown"],
            "dropped": last["dropped"] - first["dropped"],
            "skipped": last["skipped"] - first["skipped"],
            "cpu_percent": 100 * (last["cpu"] - first["cpu"]) / span,
            "latency_p50": percentile(latencies, 50),
            "latency_p95": percentile(latencies, 95),
            "invoke_p50": window_p50(self.classifier.invoke_ms, *window),
            "classify_p50": window_p50(self.classifier.classify_ms, *window),
            "busy_p50": _busy_p50(self.steps, window),
            **{f"{name}_p50": value for name, value in steps.items()},
        }


def _busy_p50(steps: dict[str, collections.deque], window: tuple[float, float]
              ) -> float:
    """The display loop's p50 time per frame outside the wait for the frame."""
    from pi_classifier.bench import percentile

    reads = [ms for moment, ms in steps["read"] if window[0] <= moment <= window[1]]
    whole = [ms for moment, ms in steps["step"] if window[0] <= moment <= window[1]]
    return percentile([a - b for a, b in zip(whole, reads, strict=False)], 50)


def measure_pipeline(spec: dict[str, Any], config: Any,
                     classifier: TimedClassifier) -> dict[str, Any]:
    """Run the live classifier for the warm-up and the measured window."""
    run = PipelineRun(config, classifier, instrument=not spec["soak"])
    run.start()
    Path(spec["ready"]).touch()

    time.sleep(spec["warmup"])
    first = run.counters()
    time.sleep(spec["seconds"])
    last = run.counters()

    Path(spec["stopping"]).touch()
    run.stop()
    if run.errors:
        raise RuntimeError(run.errors[0])
    return run.figures(first, last)


class ReferenceLoop:
    """Capture, classify, draw and show, one frame after another, one thread.

    It draws exactly as the live classifier does (the frame letterboxed to
    the whole screen, the overlay on top), so the two differ only in how the
    work is spread over threads.

    Args:
        config: The daemon configuration.
        classifier: The (timed) classifier.
        sysfs: The fake sysfs folder of the framebuffer.
    """

    def __init__(self, config: Any, classifier: TimedClassifier, sysfs: Path
                 ) -> None:
        from pi_classifier.displays.framebuffer import FramebufferDisplay
        from pi_classifier.meters import RateMeter
        from pi_classifier.overlay import Overlay
        from pi_classifier.sources import create_source

        self.config = config
        self.classifier = classifier
        self.source = create_source(config.camera, classifier.input_size)
        self.display = FramebufferDisplay(config.display, sysfs_root=sysfs)
        self.overlay = Overlay(config.overlay, config.top_k)
        self.rate = RateMeter()
        self.latencies: list[float] = []
        self.shown = 0

    def step(self) -> None:
        """Read, classify, draw and show one frame."""
        from pi_classifier.app import LiveClassifier
        from pi_classifier.overlay import OverlayContent
        from pi_classifier.scores import rank

        frame = self.source.read(0.5)
        scores = self.classifier.probabilities(frame.image, "bgr")
        ranked = rank(scores, self.config.top_k, self.config.threshold)
        labels = tuple((self.classifier.labels.name(index), score)
                       for index, score in ranked)
        content = OverlayContent(
            labels=labels, display_fps=self.rate.rate(),
            inference_fps=self.rate.rate(),
            inference_ms=self.classifier.timing.total_ms,
            latency_ms=self.latencies[-1] if self.latencies else 0.0,
        )
        canvas = LiveClassifier._canvas(frame.image, self.display.size)
        self.overlay.draw(canvas, content)
        self.display.show(canvas)

        now = time.monotonic()
        self.rate.tick(now)
        self.latencies.append((now - frame.timestamp) * 1000)
        self.shown += 1

    def run_for(self, seconds: float) -> None:
        """Loop for a while."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.step()


def cpu_counters() -> dict[str, Any]:
    """The clocks ``cpu_split`` compares at both ends of a window."""
    return {"time": time.monotonic(), "cpu": time.process_time(),
            "threads": thread_cpu_seconds(), "machine": machine_cpu()}


def measure_reference(spec: dict[str, Any], config: Any,
                      classifier: TimedClassifier) -> dict[str, Any]:
    """Run the reference loop for the warm-up and the measured window."""
    from pi_classifier.bench import percentile

    loop = ReferenceLoop(config, classifier, Path(spec["sysfs"]))
    with contextlib.closing(loop.source), contextlib.closing(loop.display):
        loop.source.open()
        loop.display.open()
        loop.step()
        Path(spec["ready"]).touch()
        loop.run_for(spec["warmup"])

        shown, latencies = loop.shown, len(loop.latencies)
        first = cpu_counters()
        loop.run_for(spec["seconds"])
        last = cpu_counters()
        Path(spec["stopping"]).touch()

    started, ended = first["time"], last["time"]
    span = ended - started
    window = loop.latencies[latencies:]
    return {
        "cpu": cpu_split(first, last, span,
                         {"display_loop": threading.get_native_id()}),
        "seconds": span,
        "display_fps": (loop.shown - shown) / span,
        "inference_fps": (loop.shown - shown) / span,
        "shown": loop.shown - shown, "dropped": 0, "skipped": 0,
        "cpu_percent": 100 * (last["cpu"] - first["cpu"]) / span,
        "latency_p50": percentile(window, 50),
        "latency_p95": percentile(window, 95),
        "invoke_p50": window_p50(classifier.invoke_ms, started, ended),
        "classify_p50": window_p50(classifier.classify_ms, started, ended),
    }


def child_main(spec: dict[str, Any]) -> None:
    """Measure one phase in this process and write the figures as JSON."""
    from pi_classifier.app import build_classifier
    from pi_classifier.displays import framebuffer

    logging.basicConfig(level=logging.WARNING)
    framebuffer.SYSFS_ROOT = Path(spec["sysfs"])
    config = child_config(spec)
    classifier = build_classifier(config)
    # The soak keeps no timings, so only the daemon's own memory can grow.
    keep = 0 if spec["soak"] else TIMING_SAMPLES
    timed_classifier = TimedClassifier(classifier, keep)

    bare_before = bare_invoke_ms(classifier, spec["bare_seconds"])
    if spec["mode"] == "reference":
        figures = measure_reference(spec, config, timed_classifier)
    else:
        figures = measure_pipeline(spec, config, timed_classifier)
    bare_after = bare_invoke_ms(classifier, spec["bare_seconds"])

    figures.update(
        threads=classifier.threads, runtime=str(classifier.runtime),
        bare_before=bare_before, bare_after=bare_after,
        peak_rss_mb=proc_status_mb("self", "VmHWM"),
    )
    Path(spec["result"]).write_text(json.dumps(figures))


# -- the parent: starts children, watches them, judges the figures -----------


class Sample:
    """One reading of a child's /proc files.

    Args:
        pid: The child's process id.
        started: ``time.monotonic()`` when the child's pipeline was ready.
    """

    def __init__(self, pid: int, started: float) -> None:
        self.at = time.monotonic() - started
        self.rss_mb = proc_status_mb(pid, "VmRSS")
        self.anon_mb = proc_status_mb(pid, "RssAnon")
        self.fds = len(os.listdir(f"/proc/{pid}/fd"))
        self.threads = len(os.listdir(f"/proc/{pid}/task"))


class Child:
    """One measured phase in a child process.

    Args:
        folder: A temporary folder for the markers, the result and the log.
        spec: What the child measures (see ``child_main``).
    """

    def __init__(self, folder: Path, spec: dict[str, Any]) -> None:
        name = f"{spec['mode']}-{spec['threads']}-{spec['fps']}"
        self.spec = {**spec, **{key: str(folder / f"{name}.{key}")
                                for key in ("ready", "stopping", "result")}}
        self.log_path = folder / f"{name}.log"
        self.samples: list[Sample] = []
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the child process."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            part for part in (str(REPO), env.get("PYTHONPATH")) if part)
        if (TESTDATA / "models").is_dir():
            env.setdefault("PI_CLASSIFIER_MODEL_DIR", str(TESTDATA / "models"))
        with self.log_path.open("w") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, __file__, "--child", json.dumps(self.spec)],
                env=env, stdout=log_file, stderr=subprocess.STDOUT,
            )

    def _fail(self, why: str) -> None:
        """Stop with the child's log."""
        self.kill()
        tail = self.log_path.read_text()[-3000:]
        raise SystemExit(f"{why}; the child's log ends:\n{tail}")

    def watch(self, interval: float) -> None:
        """Wait until ready, sample until it stops its pipeline, then wait."""
        deadline = time.monotonic() + START_TIMEOUT
        while not Path(self.spec["ready"]).exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self._fail("the measured pipeline did not start")
            time.sleep(0.05)

        ready = time.monotonic()
        while self.process.poll() is None:
            with contextlib.suppress(OSError):
                sample = Sample(self.process.pid, ready)
                if Path(self.spec["stopping"]).exists():
                    break
                self.samples.append(sample)
            time.sleep(interval)

        try:
            self.process.wait(FINISH_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._fail(f"the child did not finish within {FINISH_TIMEOUT:.0f} s")
        if self.process.returncode != 0:
            self._fail(f"the child exited with status {self.process.returncode}")

    def result(self) -> dict[str, Any]:
        """The figures the child wrote."""
        return json.loads(Path(self.spec["result"]).read_text())

    def kill(self) -> None:
        """End the child if it still runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@contextlib.contextmanager
def fake_framebuffer() -> Iterator[tuple[Path, Path, Path]]:
    """A 1920x1080 RGB565 framebuffer file with its fake sysfs folder."""
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as name:
        folder = Path(name)
        width, height = SCREEN
        stride = width * 2
        sysfs = folder / "sys"
        (sysfs / "fb0").mkdir(parents=True)
        (sysfs / "fb0" / "virtual_size").write_text(f"{width},{height}\n")
        (sysfs / "fb0" / "bits_per_pixel").write_text("16\n")
        (sysfs / "fb0" / "stride").write_text(f"{stride}\n")
        device = folder / "dev" / "fb0"
        device.parent.mkdir()
        device.write_bytes(bytes(stride * height))
        yield folder, device, sysfs


class Verdicts:
    """Prints target lines and remembers each verdict for the summary.

    Lines checked while ``counting`` is False (the reference loop) are
    printed and summed up apart, and do not decide the exit status.
    """

    def __init__(self) -> None:
        self.lines: list[tuple[str, bool, bool]] = []
        self.counting = True

    def check(self, label: str, figure: str, target: str, ok: bool) -> None:
        """Print one target line with PASS or FAIL."""
        verdict = "PASS" if ok else "FAIL"
        print(f"  {label:<24} {figure:<44} target {target:<18} {verdict}")
        self.lines.append((f"{label}: {figure} (target {target})", ok, self.counting))

    @property
    def passed(self) -> bool:
        """Whether every counted target was met."""
        return all(ok for _, ok, counted in self.lines if counted)


def machine_lines() -> list[str]:
    """What this machine is, for the top of the report."""
    import cv2
    import numpy

    from pi_classifier.runtime import load_runtime

    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    usable = len(os.sched_getaffinity(0))
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return [
        f"machine   {model}, {os.cpu_count()} cores ({usable} usable), "
        f"Linux {platform.release()} {platform.machine()}",
        f"python    {platform.python_version()} ({sys.executable})",
        f"runtime   {load_runtime('auto')}; numpy {numpy.__version__}; "
        f"OpenCV {cv2.__version__}",
        f"load      {load} (1, 5, 15 min load average at the start)",
    ]


def busy_note(others: float) -> None:
    """Warn when other processes took more than half of the machine."""
    share = others / (os.cpu_count() or 1)
    if share > BUSY_MACHINE_SHARE * 100:
        print(f"  note: other processes used {share:.0f}% of this machine's CPU "
              "meanwhile; rates below target may be theirs (compare the reference)")


def floor3(ratio: float) -> float:
    """A ratio cut (not rounded) to three decimals, so 0.9499 never shows 0.950."""
    return math.floor(ratio * 1000) / 1000


def print_phase(title: str, figures: dict[str, Any], fps: float,
                verdicts: Verdicts) -> None:
    """Print one phase's figures and judge them against the targets."""
    bare = (figures["bare_before"] + figures["bare_after"]) / 2
    bare_rate = 1000 / bare
    bound = min(fps, bare_rate)
    display_ratio = floor3(figures["display_fps"] / fps)
    inference_ratio = floor3(figures["inference_fps"] / bound)
    latency_target = bare + LATENCY_FRAME_INTERVALS * 1000 / fps
    behind = max(0, round(fps * figures["seconds"]) - figures["shown"])

    print(f"\n== {title}, {figures['threads']} inference thread(s), "
          f"{figures['seconds']:.1f} s ==")
    print(f"  bare invoke p50          {bare:.2f} ms (before "
          f"{figures['bare_before']:.2f}, after {figures['bare_after']:.2f}) "
          f"= {bare_rate:.1f}/s")
    print(f"  invoke in the pipeline   p50 {figures['invoke_p50']:.2f} ms "
          f"(x{figures['invoke_p50'] / bare:.2f} of bare); whole classification "
          f"p50 {figures['classify_p50']:.2f} ms")
    if "present_p50" in figures:
        print(f"  display loop per frame   p50s: busy {figures['busy_p50']:.2f} ms, "
              f"of which present {figures['present_p50']:.2f} (canvas "
              f"{figures['canvas_p50']:.2f}, overlay {figures['overlay_p50']:.2f}, "
              f"show {figures['show_p50']:.2f})")
    cpu = figures["cpu"]
    worker = f" + worker {cpu['worker']:.0f}" if "worker" in cpu else ""
    print(f"  CPU, % of one core       this process {figures['cpu_percent']:.0f} = "
          f"display loop {cpu['display_loop']:.0f}{worker} + other threads "
          f"{cpu['other_threads']:.0f}; other processes on the machine "
          f"{cpu['other_processes']:.0f} (of {100 * (os.cpu_count() or 1)})")
    if "worker" in cpu:
        print(f"  frames not classified    {figures['skipped']} (skipped while the "
              "worker was busy; by design)")
    print(f"  inference fps raw ratio  {figures['inference_fps']:.1f} / "
          f"{bare_rate:.1f} = {figures['inference_fps'] / bare_rate:.2f} "
          f"(the worker classifies each new frame once: at most {fps:g}/s)")
    busy_note(figures["cpu"]["other_processes"])
    verdicts.check(f"{title} display", f"{figures['display_fps']:.2f} / {fps:g} "
                   f"fps = {display_ratio:.3f}", f">= {DISPLAY_RATIO_TARGET}",
                   display_ratio >= DISPLAY_RATIO_TARGET)
    verdicts.check(f"{title} inference", f"{figures['inference_fps']:.2f} / "
                   f"min({fps:g}, {bare_rate:.1f}) = {inference_ratio:.3f}",
                   f">= {INFERENCE_RATIO_TARGET}",
                   inference_ratio >= INFERENCE_RATIO_TARGET)
    verdicts.check(f"{title} latency p50", f"{figures['latency_p50']:.1f} ms "
                   f"(p95 {figures['latency_p95']:.1f})",
                   f"<= {latency_target:.1f} ms",
                   figures["latency_p50"] <= latency_target)
    verdicts.check(f"{title} dropped", f"{figures['dropped']} frames "
                   f"({behind} behind the {fps:g} fps schedule)", "0",
                   figures["dropped"] == 0)
    verdicts.check(f"{title} peak RSS", f"{figures['peak_rss_mb']:.1f} MB (VmHWM)",
                   f"<= {PEAK_RSS_TARGET_MB:.0f} MB",
                   figures["peak_rss_mb"] <= PEAK_RSS_TARGET_MB)


def soak_baseline(samples: list[Sample], minutes: float) -> Sample:
    """The sample RSS growth is counted from: at one minute, or a quarter."""
    after = min(SOAK_BASELINE_SECONDS, minutes * 60 / 4)
    return next((s for s in samples if s.at >= after), samples[-1])


def print_soak(figures: dict[str, Any], samples: list[Sample], args: Any,
               verdicts: Verdicts) -> None:
    """Print the soak's figures and judge them."""
    base = soak_baseline(samples, args.soak_minutes)
    first, last = samples[0], samples[-1]
    growth = last.rss_mb - base.rss_mb
    rss = [s.rss_mb for s in samples]
    fds = [s.fds for s in samples]
    threads = [s.threads for s in samples]

    print(f"\n== soak: live pipeline, {figures['threads']} inference thread(s), "
          f"source at {args.soak_fps:g} fps, {figures['seconds'] / 60:.1f} min, "
          f"{len(samples)} samples every {args.sample_seconds:g} s ==")
    print(f"  display {figures['display_fps']:.1f} fps, inference "
          f"{figures['inference_fps']:.1f} fps, latency p50 "
          f"{figures['latency_p50']:.1f} ms, process CPU "
          f"{figures['cpu_percent']:.0f}% of one core, other processes "
          f"{figures['cpu']['other_processes']:.0f}%")
    busy_note(figures["cpu"]["other_processes"])
    print(f"  RSS MB   first {first.rss_mb:.1f}, at {base.at:.0f} s "
          f"{base.rss_mb:.1f}, last {last.rss_mb:.1f}, max {max(rss):.1f}, "
          f"min {min(rss):.1f}")
    print(f"  RssAnon  first {first.anon_mb:.1f}, at {base.at:.0f} s "
          f"{base.anon_mb:.1f}, last {last.anon_mb:.1f}, max "
          f"{max(s.anon_mb for s in samples):.1f} MB (the heap: a leak shows "
          "here, and no reclaim lowers it without swap)")
    print(f"  fds      first {fds[0]}, last {fds[-1]}, max {max(fds)}, min {min(fds)}")
    print(f"  threads  first {threads[0]}, last {threads[-1]}, max {max(threads)}, "
          f"min {min(threads)}")
    verdicts.check("soak RSS growth", f"{growth:+.2f} MB after {base.at:.0f} s",
                   f"<= {RSS_GROWTH_TARGET_MB:.0f} MB", growth <= RSS_GROWTH_TARGET_MB)
    verdicts.check("soak open files", f"{min(fds)}..{max(fds)}", "constant",
                   min(fds) == max(fds))
    verdicts.check("soak threads", f"{min(threads)}..{max(threads)}", "constant",
                   min(threads) == max(threads))
    verdicts.check("soak dropped", f"{figures['dropped']} frames", "0",
                   figures["dropped"] == 0)
    verdicts.check("soak peak RSS", f"{figures['peak_rss_mb']:.1f} MB (VmHWM)",
                   f"<= {PEAK_RSS_TARGET_MB:.0f} MB",
                   figures["peak_rss_mb"] <= PEAK_RSS_TARGET_MB)


def run_child(folder: Path, spec: dict[str, Any], interval: float
              ) -> tuple[dict[str, Any], list[Sample]]:
    """Run one measured phase to its end; return its figures and samples."""
    child = Child(folder, spec)
    try:
        child.start()
        child.watch(interval)
        return child.result(), child.samples
    finally:
        child.kill()


def run_all(args: argparse.Namespace) -> Verdicts:
    """Run every phase and print its figures as it ends."""
    verdicts = Verdicts()
    with fake_framebuffer() as (folder, device, sysfs):
        base = {"model": args.model, "device": str(device), "sysfs": str(sysfs),
                "warmup": args.warmup, "bare_seconds": args.bare_seconds,
                "seconds": args.seconds, "fps": args.fps, "soak": False}
        for threads in args.threads:
            for mode, title in (("pipeline", "live"), ("reference", "reference")):
                spec = {**base, "mode": mode, "threads": threads}
                figures, _ = run_child(folder, spec, 1.0)
                verdicts.counting = mode == "pipeline"
                print_phase(f"{title} {threads}t", figures, args.fps, verdicts)
                sys.stdout.flush()
        if args.soak_minutes > 0:
            spec = {**base, "mode": "pipeline", "threads": args.soak_threads,
                    "fps": args.soak_fps, "soak": True, "warmup": 0.0,
                    "bare_seconds": 0.0, "seconds": args.soak_minutes * 60}
            figures, samples = run_child(folder, spec, args.sample_seconds)
            verdicts.counting = True
            print_soak(figures, samples, args, verdicts)
    return verdicts


def print_summary(verdicts: Verdicts) -> None:
    """Print the missed targets once more and the counts."""
    print("\n== summary ==")
    for line, ok, counted in verdicts.lines:
        if not ok:
            print(f"  FAIL  {line}{'' if counted else ' (reference loop)'}")
    for counted, what in ((True, "live pipeline and soak"),
                          (False, "reference loop, not counted in the exit status")):
        oks = [ok for _, ok, kept in verdicts.lines if kept == counted]
        if oks:
            print(f"{what}: {sum(oks)} passed, {len(oks) - sum(oks)} failed")


#: Phase lengths: (normal run, --quick run); a flag given explicitly wins.
LENGTHS = {
    "seconds": (10.0, 5.0),
    "warmup": (2.0, 1.0),
    "bare_seconds": (2.0, 1.0),
    "soak_minutes": (10.0, 1.0),
    "sample_seconds": (5.0, 2.0),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line; --quick shortens the phases not set explicitly."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL,
                        help="model name (found in the test data) or .tflite path")
    parser.add_argument("--fps", type=float, default=30.0, help="source frame rate")
    parser.add_argument("--threads", default="1,2",
                        help="inference thread counts, comma-separated")
    parser.add_argument("--seconds", type=float,
                        help="measured seconds per phase (10; quick 5)")
    parser.add_argument("--warmup", type=float,
                        help="seconds before each measured window (2; quick 1)")
    parser.add_argument("--bare-seconds", type=float,
                        help="bare invoke seconds before and after each phase "
                        "(2; quick 1)")
    parser.add_argument("--soak-minutes", type=float,
                        help="soak length, 0 skips it (10; quick 1)")
    parser.add_argument("--soak-fps", type=float, default=240.0,
                        help="source rate in the soak (240, the most the config "
                        "allows, runs the display loop flat out)")
    parser.add_argument("--soak-threads", type=int, default=0,
                        help="inference threads in the soak (0 = all cores)")
    parser.add_argument("--sample-seconds", type=float,
                        help="seconds between soak samples of /proc/PID (5; quick 2)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 5 s phases, 1 s bare invoke, 1 min soak")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.threads = [int(part) for part in args.threads.split(",") if part.strip()]
    for key, (normal, quick) in LENGTHS.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else normal)
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return

    logging.basicConfig(level=logging.WARNING)
    print("pi-classifier live pipeline benchmark")
    for line in machine_lines():
        print(line)
    print(f"setup     test-pattern {FRAME[0]}x{FRAME[1]} at {args.fps:g} fps -> "
          f"{SCREEN[0]}x{SCREEN[1]} RGB565 file-backed framebuffer; {args.model}; "
          f"{args.seconds:g} s per phase; soak {args.soak_minutes:g} min")
    print(f"command   {' '.join([Path(sys.executable).name, *sys.argv])}")
    sys.stdout.flush()

    verdicts = run_all(args)
    print_summary(verdicts)
    sys.exit(0 if verdicts.passed else 1)


if __name__ == "__main__":
    main()
