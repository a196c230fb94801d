"""The live classifier: camera -> inference worker -> overlay -> screen."""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import cv2
import numpy as np

from pi_classifier.classifier import Classifier
from pi_classifier.config import COMMAND_LINE, Config, load_config, with_changes
from pi_classifier.displays.base import Display
from pi_classifier.errors import ConfigError, PiClassifierError, SourceError
from pi_classifier.frames import Frame
from pi_classifier.labels import Namer
from pi_classifier.logs import under_journal
from pi_classifier.meters import RateMeter, TemperatureReader
from pi_classifier.notify import Notifier
from pi_classifier.overlay import Overlay, OverlayContent, shown_rate
from pi_classifier.smoothing import LabelSmoother
from pi_classifier.sources.base import FrameSource
from pi_classifier.state import LiveState, ShownLabel
from pi_classifier.terminal import keyboard_signals_off
from pi_classifier.worker import InferenceWorker, Result

log = logging.getLogger(__name__)

#: How long a source may fail in a row before the program gives up.
SOURCE_GIVE_UP_SECONDS = 30.0
#: Seconds between STATUS= updates to the service manager.
STATUS_INTERVAL = 2.0
#: Longest single wait for a frame, so stop requests are seen quickly.
READ_SLICE = 0.5

MODEL_KEYS = ("model", "labels", "runtime", "threads", "delegate", "crop")
#: Config sections whose part is closed and opened again when they change, in
#: this order: the display is made for the source.
RESTARTED_PARTS = ("camera", "display", "web")

Overrides = Callable[[Config], Config]


def build_classifier(config: Config) -> Classifier:
    """Find (fetching when allowed) the model and labels, and load them."""
    from pi_classifier.models import resolve_labels, resolve_model

    model = resolve_model(config.model)
    labels = resolve_labels(config.labels, model)
    return Classifier(model, labels, runtime=config.runtime, threads=config.threads,
                      delegate=config.delegate, crop=config.crop,
                      aliases=config.aliases)


def fit_size(width: int, height: int, bounds: tuple[int, int]) -> tuple[int, int]:
    """The largest size with the picture's aspect ratio that fits bounds."""
    scale = min(bounds[0] / width, bounds[1] / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


class LiveClassifier:
    """Runs the live pipeline until stopped.

    The display loop runs on the calling thread: it reads each frame, hands
    it to the inference worker without waiting, draws the newest labels and
    shows the frame. SIGHUP reloads the configuration; SIGINT and SIGTERM
    stop it.

    Args:
        config: The starting configuration.
        config_path: The file to re-read on reload, or None.
        overrides: Applied to every configuration read (command-line flags).
        notifier: The service-manager channel.
        classifier: An already-loaded classifier (else built from config).
    """

    def __init__(
        self,
        config: Config,
        config_path: str | None = None,
        overrides: Overrides | None = None,
        notifier: Notifier | None = None,
        classifier: Classifier | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = overrides or (lambda c: c)
        self.notifier = notifier or Notifier()
        self.state = LiveState()
        self.latencies: collections.deque[float] = collections.deque(maxlen=10000)
        self._classifier = classifier
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._source: FrameSource | None = None
        self._display: Display | None = None
        self._worker: InferenceWorker | None = None
        self._web: Any = None
        self._namer = Namer(config.aliases)
        self._overlay = Overlay(config.overlay, config.top_k)
        self._display_rate = RateMeter()
        self._temperature = TemperatureReader()
        self._counters = collections.Counter()
        self._shown_sequence = -1
        self._ready = False
        self._status_at = 0.0
        self._web_at = 0.0
        self._last_overlay: OverlayContent | None = None
        self._loader: threading.Thread | None = None
        self._loaded: Classifier | None = None

    # -- control ---------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the loop to stop; safe from signal handlers and other threads."""
        self._stop.set()

    def request_reload(self) -> None:
        """Ask the loop to re-read the configuration file."""
        self._reload.set()

    # -- start and stop --------------------------------------------------

    def _start(self) -> None:
        """Load the model and open everything, in that order."""
        if self._classifier is None:
            self._classifier = build_classifier(self.config)
        smoothing = self.config.smoothing
        smoother = LabelSmoother(smoothing.alpha, smoothing.threshold_high,
                                 smoothing.threshold_low, self.config.top_k)
        self._worker = InferenceWorker(self._classifier, smoother)
        self._open_source()
        self._open_display()
        self._worker.start()
        self._start_web()
        self.state.update(model=self._classifier.model_path.name,
                          runtime=str(self._classifier.runtime), worker_alive=True)

    def _open_source(self) -> None:
        """Create and open the frame source the config names."""
        from pi_classifier.sources import create_source

        source = create_source(self.config.camera, self._classifier.input_size)
        source.open()
        self._source = source
        self.state.update(source=source.name)
        log.info("frames from %s", source.name)

    def _open_display(self) -> None:
        """Create and open the display the config names."""
        from pi_classifier.displays import create_display

        display = create_display(self.config.display, self._source)
        self._display = display
        self._last_overlay = None
        self.state.update(display=display.name)
        log.info("showing on %s (%s)", display.name,
                 "x".join(map(str, display.size)) if display.size else "no screen")

    def _start_web(self) -> None:
        """Start the web view when the config turns it on."""
        if not self.config.web.enabled:
            return
        from pi_classifier.web import WebServer

        web = WebServer(self.config.web, self.state)
        web.start()
        self._web = web

    def _stop_web(self) -> None:
        """Stop the web view if it runs."""
        if self._web is not None:
            self._web.stop(1.0)
            self._web = None

    def _close(self) -> None:
        """Release everything; safe after a partial start."""
        if self._worker is not None:
            self._worker.stop(1.0)
        self._stop_web()
        for part in (self._source, self._display):
            if part is not None:
                try:
                    part.close()
                except Exception:
                    log.warning("closing %s failed", part.name, exc_info=True)
        self._source = self._display = None

    # -- the loop --------------------------------------------------------

    def run(self, duration: float | None = None) -> int:
        """Run until stopped, for at most ``duration`` seconds.

        Returns:
            0 after a requested stop.

        Raises:
            PiClassifierError: A part failed and could not be recovered.
        """
        deadline = None if duration is None else time.monotonic() + duration
        try:
            self._start()
            while not self._stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                self._step()
        finally:
            self.notifier.stopping()
            log.info("stopping")
            self._close()
        return 0

    def _step(self) -> None:
        """Read, submit, draw and show one frame."""
        frame = self._read_frame()
        if frame is None:
            return
        self._counters["captured"] += 1
        self._worker.submit(frame)
        self._swap_loaded_model()
        result = self._worker.latest()
        content = self._content(result)
        self._present(frame, content)
        self._after_shown(result, content)

    def _read_frame(self) -> Frame | None:
        """The next frame; None after a timeout slice or a recovered failure."""
        try:
            frame = self._source.read(READ_SLICE)
        except SourceError as error:
            self._source_failed(error)
            return None
        self._counters.pop("source_failing_since", None)
        return frame

    def _source_failed(self, error: SourceError) -> None:
        """Reopen a failing source with backoff; give up after a while."""
        now = time.monotonic()
        since = self._counters.setdefault("source_failing_since", now)
        if now - since > SOURCE_GIVE_UP_SECONDS:
            raise SourceError(f"no frames for {now - since:.0f} s: {error}")
        if now - since < self.config.camera.frame_timeout:
            return
        log.warning("%s; reopening %s", error, self._source.name)
        self._source.close()
        self._stop.wait(min(4.0, 0.5 + (now - since) / 4))
        try:
            self._source.open()
        except SourceError as reopen_error:
            log.warning("reopening failed: %s", reopen_error)

    def _content(self, result: Result | None) -> OverlayContent:
        """What the overlay should show now."""
        labels: tuple[tuple[str, float], ...] = ()
        if result is not None:
            model_labels = result.labels
            labels = tuple((self._namer(model_labels.name(index)), score)
                           for index, score in result.shown)
        return OverlayContent(
            labels=labels,
            display_fps=self._display_rate.rate(),
            inference_fps=self._worker.inference_fps,
            inference_ms=result.inference_ms if result else 0.0,
            latency_ms=self.latencies[-1] if self.latencies else 0.0,
            temperature_c=self._temperature.read(),
        )

    def _present(self, frame: Frame, content: OverlayContent) -> None:
        """Draw the overlay and put the frame on screen."""
        display = self._display
        if display.composites_overlay:
            self._present_overlay_only(content)
            canvas = frame.image
        else:
            canvas = self._canvas(frame.image, display.size)
            self._overlay.draw(canvas, content)
            display.show(canvas)
        self._publish_for_web(canvas, content)

    def _present_overlay_only(self, content: OverlayContent) -> None:
        """Redraw the DRM overlay layer only when what it shows changed."""
        shown = content.rounded()
        if shown == self._last_overlay:
            return
        width, height = self._display.size
        self._display.show_overlay(self._overlay.render_rgba(width, height, content))
        self._last_overlay = shown

    @staticmethod
    def _canvas(image: np.ndarray, bounds: tuple[int, int] | None) -> np.ndarray:
        """A private copy of the frame, letterboxed to the whole screen.

        The overlay is then drawn on the screen's own pixels, anchored to
        the screen's corner and sharp at its resolution, and the display
        has nothing left to scale.
        """
        if bounds is None:
            return image.copy()
        height, width = image.shape[:2]
        size = fit_size(width, height, bounds)
        if size == (width, height) == bounds:
            return image.copy()
        canvas = np.zeros((bounds[1], bounds[0], 3), np.uint8)
        left, top = (bounds[0] - size[0]) // 2, (bounds[1] - size[1]) // 2
        target = canvas[top : top + size[1], left : left + size[0]]
        if size == (width, height):
            target[...] = image
            return canvas
        resized = cv2.resize(image, size, dst=target, interpolation=cv2.INTER_LINEAR)
        if resized is not target and not np.shares_memory(resized, target):
            target[...] = resized
        return canvas

    def _publish_for_web(self, canvas: np.ndarray, content: OverlayContent) -> None:
        """Offer the annotated frame to the web view.

        Publishing is O(1): the web view's own thread encodes at its frame
        cap, and only while someone watches. Each canvas is a fresh array
        the display loop never touches again, so it is handed over without
        a copy. With the DRM display the camera picture never reaches the
        CPU, so the small model-sized picture is annotated instead, and
        only at the web view's frame cap while it has viewers.
        """
        if self._web is None:
            return
        if self._display.composites_overlay:
            now = time.monotonic()
            due = now - self._web_at >= 1 / self.config.web.max_fps
            if not (self._web.viewers and due):
                return
            self._web_at = now
            canvas = canvas.copy()
            self._overlay.draw(canvas, content)
        self.state.publish_frame(canvas)

    def _after_shown(self, result: Result | None, content: OverlayContent) -> None:
        """Update figures, latency, state and the service manager."""
        now = time.monotonic()
        self._display_rate.tick(now)
        self._counters["shown"] += 1
        if result is not None and result.sequence != self._shown_sequence:
            self._shown_sequence = result.sequence
            self.latencies.append((now - result.timestamp) * 1000)
        self._update_state(now, result, content)
        self._worker.check()
        if not self._ready:
            if result is None:
                return
            self._ready = True
            self._status_at = now
            self.notifier.ready(self._status_text(content))
            log.info("ready: first labels on screen")
        if self._worker.alive:
            self.notifier.watchdog()
        if now - self._status_at >= STATUS_INTERVAL:
            self._status_at = now
            self.notifier.status(self._status_text(content))

    def _update_state(self, now: float, result: Result | None,
                      content: OverlayContent) -> None:
        """Share the figures of the frame just shown through the state object."""
        worker = self._worker
        shown = result.shown if result is not None else ()
        self.state.update(
            labels=tuple(
                ShownLabel(index, name, round(score, 4))
                for (name, score), (index, _) in zip(content.labels, shown, strict=True)
            ),
            display_fps=round(content.display_fps, 2),
            inference_fps=round(content.inference_fps, 2),
            inference_ms=round(content.inference_ms, 2),
            latency_ms=round(content.latency_ms, 2),
            frames_captured=self._counters["captured"],
            frames_shown=self._counters["shown"],
            frames_dropped=self._counters["captured"] - self._counters["shown"],
            frames_skipped=worker.skipped,
            last_frame=now,
            worker_alive=worker.alive,
            temperature_c=content.temperature_c,
        )

    @staticmethod
    def _status_text(content: OverlayContent) -> str:
        """One line for systemctl status."""
        top = (f"{content.labels[0][0]} {content.labels[0][1] * 100:.0f}%"
               if content.labels else "nothing recognised")
        return f"{shown_rate(content.display_fps):g} fps, {top}"

    # -- reload ----------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the config file and apply what changed.

        Returns:
            True when the new configuration was applied, False when it was
            rejected and the old one kept.
        """
        self.notifier.reloading()
        try:
            new = self.overrides(load_config(self.config_path))
        except ConfigError as error:
            return self._reject(error)
        old, self.config = self.config, new
        try:
            self._switch_parts(old, new)
        except PiClassifierError as error:
            return self._reject(error)
        self._apply_live_settings(new)
        if any(getattr(old, key) != getattr(new, key) for key in MODEL_KEYS):
            self._load_model_beside(new)
        self.notifier.ready()
        log.info("configuration reloaded from %s", self.config_path)
        return True

    def _reject(self, error: PiClassifierError) -> bool:
        """Log why a reload was refused and carry on with the old settings."""
        log.error("new configuration rejected, keeping the old one: %s", error)
        self.notifier.ready()
        return False

    def _apply_live_settings(self, config: Config) -> None:
        """Settings that take effect on the next frame."""
        self._namer = Namer(config.aliases)
        self._overlay = Overlay(config.overlay, config.top_k)
        self._last_overlay = None
        smoothing = config.smoothing
        self._worker.configure_smoothing(smoothing.alpha, smoothing.threshold_high,
                                         smoothing.threshold_low, config.top_k)

    def _switch_parts(self, old: Config, new: Config) -> None:
        """Reopen the camera, display and web view whose settings changed.

        When one cannot open with its new settings (a camera that is not
        there, a port in use), every part switched so far and the failed one
        are reopened with the old settings, and the error is raised.

        Raises:
            PiClassifierError: A part failed with the new settings.
        """
        changed = [part for part in RESTARTED_PARTS
                   if getattr(old, part) != getattr(new, part)]
        tried: list[str] = []
        try:
            for part in changed:
                tried.append(part)
                self._reopen(part)
        except PiClassifierError:
            self.config = old
            for part in tried:
                self._reopen(part)
            raise

    def _reopen(self, part: str) -> None:
        """Close the camera, display or web view and open it as configured."""
        log.info("restarting the %s", part)
        if part == "web":
            self._stop_web()
            self._start_web()
        elif part == "camera":
            self._source.close()
            self._open_source()
        else:
            self._display.close()
            self._open_display()

    def _load_model_beside(self, config: Config) -> None:
        """Load the new model on a thread while the old one keeps working."""
        def load() -> None:
            try:
                self._loaded = build_classifier(config)
            except PiClassifierError as error:
                log.error("new model not loaded, keeping the old one: %s", error)

        log.info("loading model %s beside the current one", config.model)
        self._loader = threading.Thread(target=load, name="model-loader", daemon=True)
        self._loader.start()

    def _swap_loaded_model(self) -> None:
        """Swap in a model the loader finished, between two frames."""
        loaded, self._loaded = self._loaded, None
        if loaded is None:
            return
        self._classifier = loaded
        self._worker.swap_model(loaded)
        self.state.update(model=loaded.model_path.name, runtime=str(loaded.runtime))
        log.info("now classifying with %s", loaded.model_path.name)


def _source_overrides(spec: str) -> dict[str, Any]:
    """Turn ``--source`` into camera settings."""
    from pi_classifier.sources import parse_source_spec

    return parse_source_spec(spec)


def _web_overrides(spec: str) -> dict[str, Any]:
    """Turn ``--web [HOST:]PORT`` into web settings."""
    host, _, port = spec.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"--web needs [HOST:]PORT, not {spec!r}") from None
    changes: dict[str, Any] = {"enabled": True, "port": number}
    if host:
        changes["listen"] = host.strip("[]")
    return changes


def overrides_from_args(args: argparse.Namespace) -> Overrides:
    """Command-line flags as a function applied to every config read.

    The flags are checked by the config file's rules each time they are
    applied, so the file and the flags together must make a valid config.
    """
    changes: dict[str, Any] = {key: getattr(args, key) for key in ("model", "labels")
                               if getattr(args, key) is not None}
    if args.source:
        changes["camera"] = _source_overrides(args.source)
    if args.display:
        changes["display"] = {"output": args.display}
    if args.web:
        changes["web"] = _web_overrides(args.web)

    def apply(config: Config) -> Config:
        return with_changes(config, changes, COMMAND_LINE)

    return apply


def _install_signals(app: LiveClassifier) -> dict[int, Any]:
    """Route SIGINT/SIGTERM to stop and SIGHUP to reload; return the old ones."""
    def stop(number: int, frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(number).name)
        app.request_stop()

    def reload(number: int, frame: FrameType | None) -> None:
        app.request_reload()

    handlers = {signal.SIGINT: stop, signal.SIGTERM: stop, signal.SIGHUP: reload}
    return {number: signal.signal(number, handler)
            for number, handler in handlers.items()}


def run_from_args(args: argparse.Namespace) -> int:
    """The ``pi-classifier run`` command."""
    overrides = overrides_from_args(args)
    config_path = args.config
    if config_path is None:
        from pi_classifier.config import DEFAULT_CONFIG_PATH

        config_path = str(DEFAULT_CONFIG_PATH) if Path(
            DEFAULT_CONFIG_PATH).exists() else None
    config = overrides(load_config(config_path))
    app = LiveClassifier(config, config_path, overrides)
    previous = _install_signals(app)
    keyboard = keyboard_signals_off() if under_journal() else contextlib.nullcontext()
    try:
        with keyboard:
            return app.run(args.duration)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
