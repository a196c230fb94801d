"""The ``bench`` command's measurements: invoke time and full per-frame cost."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from pi_classifier.classifier import Classifier
from pi_classifier.scores import rank

log = logging.getLogger(__name__)

WARM_UP_SECONDS = 1.0
FRAME_SIZE = (640, 480)


def camera_like_frame(width: int = FRAME_SIZE[0], height: int = FRAME_SIZE[1]
                      ) -> np.ndarray:
    """A BGR frame with smooth gradients and noise, like a camera's."""
    generator = np.random.default_rng(7)
    rows = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    columns = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    frame = np.stack([rows + 0 * columns, columns + 0 * rows,
                      (rows + columns) / 2], axis=2)
    frame += generator.normal(0, 12, frame.shape)
    return np.clip(frame, 0, 255).astype(np.uint8)


def percentile(samples: list[float], share: float) -> float:
    """The given percentile (0-100) of samples, or 0 when there are none."""
    return float(np.percentile(samples, share)) if samples else 0.0


def run_benchmark(
    classifier: Classifier,
    seconds: float = 5.0,
    image: np.ndarray | None = None,
    top_k: int = 3,
) -> dict[str, Any]:
    """Measure bare invoke time and the full per-frame cost, interleaved.

    Each round runs one bare ``invoke()`` and one full classification (crop,
    resize, set input, invoke, scores to ranked labels) so both see the same
    machine load.

    Args:
        classifier: The loaded classifier.
        seconds: How long to measure after the warm-up.
        image: The picture to classify; default a 640x480 camera-like frame.
        top_k: Classes ranked per frame.

    Returns:
        The figures, in milliseconds where they are times.
    """
    frame = camera_like_frame() if image is None else image
    _repeat(lambda: _full(classifier, frame, top_k), WARM_UP_SECONDS)
    invokes: list[float] = []
    fulls: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or not invokes:
        invokes.append(classifier.invoke_only())
        fulls.append(_full(classifier, frame, top_k))
    invoke_p50 = percentile(invokes, 50)
    full_p50 = percentile(fulls, 50)
    return {
        "model": classifier.model_path.name,
        "runtime": str(classifier.runtime),
        "threads": classifier.threads,
        "input_size": list(classifier.input_size),
        "frame_size": [int(frame.shape[1]), int(frame.shape[0])],
        "rounds": len(invokes),
        "invoke_ms_p50": round(invoke_p50, 3),
        "invoke_ms_p95": round(percentile(invokes, 95), 3),
        "frame_ms_p50": round(full_p50, 3),
        "frame_ms_p95": round(percentile(fulls, 95), 3),
        "frame_to_invoke_ratio": round(full_p50 / invoke_p50, 3) if invoke_p50 else 0,
        "max_fps": round(1000 / full_p50, 1) if full_p50 else 0,
    }


def _full(classifier: Classifier, frame: np.ndarray, top_k: int) -> float:
    """One whole classification; return its milliseconds."""
    started = time.perf_counter()
    rank(classifier.probabilities(frame), top_k)
    return (time.perf_counter() - started) * 1000


def _repeat(step: Any, seconds: float) -> None:
    """Call step repeatedly for about the given time."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        step()


def format_report(report: dict[str, Any]) -> str:
    """The report as lines for a person."""
    width, height = report["input_size"]
    return "\n".join([
        f"model     {report['model']} ({width}x{height})",
        f"runtime   {report['runtime']}, {report['threads']} threads",
        f"invoke    p50 {report['invoke_ms_p50']:.2f} ms   "
        f"p95 {report['invoke_ms_p95']:.2f} ms",
        f"per frame p50 {report['frame_ms_p50']:.2f} ms   "
        f"p95 {report['frame_ms_p95']:.2f} ms   "
        f"(x{report['frame_to_invoke_ratio']:.2f} of invoke, "
        f"{report['frame_size'][0]}x{report['frame_size'][1]} frame)",
        f"max       {report['max_fps']:.0f} classifications per second",
    ])
