"""Frame sources, and the factory that picks one from the configuration."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
from typing import Any

from pi_classifier.config import CameraConfig
from pi_classifier.errors import ConfigError, SourceError, UsageError
from pi_classifier.sources.base import FrameSource

log = logging.getLogger(__name__)

#: The names ``camera.source`` and ``--source`` accept.
SOURCE_NAMES = ("auto", "picamera2", "v4l2", "video", "images", "test-pattern")

#: Sources that need a device after the colon, and what it names.
_DEVICE_REQUIRED = {"video": "a video file", "images": "a folder or a glob"}

#: Sources that take no device after the colon.
_DEVICE_REFUSED = ("auto", "test-pattern")

#: The module and class of each source that is built the same way.
_CLASSES = {
    "v4l2": ("pi_classifier.sources.v4l2", "V4L2Source"),
    "video": ("pi_classifier.sources.video", "VideoSource"),
    "images": ("pi_classifier.sources.images", "ImagesSource"),
    "test-pattern": ("pi_classifier.sources.pattern", "TestPatternSource"),
}

_PICAMERA2_MODULE = "pi_classifier.sources.picamera2"

_SPEC_HELP = (
    "use auto, picamera2, v4l2[:DEVICE], video:FILE, images:FOLDER_OR_GLOB "
    "or test-pattern"
)


def parse_source_spec(spec: str) -> dict[str, str | None]:
    """Turn a ``--source`` value into camera config overrides.

    ``images:/path``, ``video:/file.mp4``, ``v4l2:/dev/video1`` (or just
    ``v4l2``), ``picamera2``, ``test-pattern`` and ``auto`` are accepted. The
    device is always in the result, None when none was given, so a device
    from the config file never leaks into a different source.

    Args:
        spec: The value given on the command line.

    Returns:
        ``{"source": name, "device": device or None}``.

    Raises:
        UsageError: The name is unknown, or a device is missing or not wanted.

    """
    name, _, device = spec.strip().partition(":")
    name, device = name.strip().lower(), device.strip()
    if name not in SOURCE_NAMES:
        raise UsageError(f"unknown source {spec!r}: {_SPEC_HELP}")
    if name in _DEVICE_REQUIRED and not device:
        raise UsageError(
            f"the {name} source needs {_DEVICE_REQUIRED[name]}: {name}:PATH"
        )
    if name in _DEVICE_REFUSED and device:
        raise UsageError(f"the {name} source takes nothing after the colon")
    return {"source": name, "device": device or None}


def create_source(camera: CameraConfig, model_size: tuple[int, int]) -> FrameSource:
    """Build the frame source ``camera.source`` names; it is not opened yet.

    ``auto`` takes a Raspberry Pi camera through Picamera2 when there is one,
    otherwise a V4L2 camera (``/dev/video*``).

    Args:
        camera: The camera section of the configuration.
        model_size: The model's input (width, height), for sources that can
            deliver a second picture already at that size.

    Returns:
        The source, ready to be opened.

    Raises:
        SourceError: ``auto`` found no camera, or the source needs a library
            that is not installed.
        ConfigError: The source needs a ``camera.device`` that is not set.

    """
    if camera.source == "auto":
        return _auto_source(camera, model_size)
    if camera.source == "picamera2":
        return _picamera2_source(camera, model_size)
    if camera.source not in _CLASSES:
        raise ConfigError(
            f"camera.source must be one of {', '.join(SOURCE_NAMES)}, "
            f"not {camera.source!r}"
        )

    module_name, class_name = _CLASSES[camera.source]
    source_class = getattr(_import(module_name, camera.source), class_name)
    log.debug("source: %s", camera.source)
    return source_class(camera)


def _import(module_name: str, source: str) -> Any:
    """Import a source module, explaining a missing OpenCV plainly."""
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        if error.name != "cv2":
            raise
        raise SourceError(
            f"the {source} source needs OpenCV: install python3-opencv with apt "
            "or pip install 'pi-classifier[opencv]'"
        ) from None


def _picamera2_source(camera: CameraConfig, model_size: tuple[int, int]) -> Any:
    """Build the Picamera2 source."""
    module = _import(_PICAMERA2_MODULE, "picamera2")
    return module.Picamera2Source(camera, model_size)


def _picamera2_missing_reason() -> str:
    """Say why Picamera2 cannot be used, for the auto error message."""
    if importlib.util.find_spec("picamera2") is None:
        return "python3-picamera2 is not installed"
    return "python3-picamera2 found no camera"


def _auto_source(camera: CameraConfig, model_size: tuple[int, int]) -> FrameSource:
    """Pick Picamera2, else the V4L2 devices, else say what was tried."""
    if _import(_PICAMERA2_MODULE, "picamera2").picamera2_available():
        log.info("auto source: a Raspberry Pi camera through Picamera2")
        return _picamera2_source(
            dataclasses.replace(camera, source="picamera2"), model_size
        )

    v4l2 = _import("pi_classifier.sources.v4l2", "v4l2")
    nodes = v4l2.video_devices()
    devices = v4l2.capture_devices(nodes)
    if devices:
        log.info("auto source: V4L2 (%s)", ", ".join(devices))
        return v4l2.V4L2Source(dataclasses.replace(camera, source="v4l2"))

    raise SourceError(
        f"no camera found: tried Picamera2 ({_picamera2_missing_reason()}) and "
        f"V4L2 ({v4l2.no_camera_reason(nodes)})"
    )
