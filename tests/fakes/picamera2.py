"""A stand-in for Picamera2 that follows its API, for tests without a camera.

Every method here has the name, parameters and defaults of the real one, and
raises the real error messages; tests/test_picamera2_contract.py checks both
against the picamera2 wheel. What the fake saw is kept in ``CameraRecord``s on
the shared ``FakeCameraRig``, so the fake itself has no attributes the real
class lacks.

Install a fresh rig per test::

    rig = FakeCameraRig()
    monkeypatch.setattr(FakePicamera2, "_rig", rig)

Known limitation: ``capture_request`` only works synchronously (no
``signal_function``, no ``wait=False``), which is all pi-classifier uses.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections import deque
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from enum import Enum
from types import SimpleNamespace
from typing import Any

import numpy as np


class _Transform:
    """libcamera.Transform: flips of the picture."""

    def __init__(self, hflip=0, vflip=0, transpose=0):
        self.hflip, self.vflip, self.transpose = hflip, vflip, transpose

    def __repr__(self):
        return f"<Transform hflip={self.hflip} vflip={self.vflip}>"


class _ColorSpace:
    """libcamera.ColorSpace, reduced to its name."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"<ColorSpace {self.name}>"

    @staticmethod
    def Sycc():  # noqa: N802 - libcamera's name
        return _ColorSpace("sYCC")

    @staticmethod
    def Smpte170m():  # noqa: N802 - libcamera's name
        return _ColorSpace("SMPTE170M")

    @staticmethod
    def Rec709():  # noqa: N802 - libcamera's name
        return _ColorSpace("Rec709")


# Named like the real module so that the fake's default values read exactly as
# the real ones (``libcamera.Transform()``), which the contract test compares.
libcamera = SimpleNamespace(Transform=_Transform, ColorSpace=_ColorSpace)


class Platform(Enum):
    """picamera2.platform.Platform: the ISP generation."""

    VC4 = 0
    PISP = 1


class Preview(Enum):
    """picamera2.Preview: the preview kinds start_preview accepts."""

    NULL = "null"
    DRM = "drm"
    QT = "qt"
    QTGL = "qtgl"
    QTGL_DIRECT = "qtgl-direct"


# The keyword arguments of the real DrmPreview and NullPreview constructors.
_PREVIEW_KWARGS = {
    Preview.DRM: ("x", "y", "width", "height", "transform", "device"),
    Preview.NULL: ("x", "y", "width", "height", "transform"),
}


def _align(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def bt601_yuv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, U, V planes (float) of an RGB picture, BT.601 limited range."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + 0.256788 * r + 0.504129 * g + 0.097906 * b
    u = 128 - 0.148223 * r - 0.290993 * g + 0.439216 * b
    v = 128 + 0.439216 * r - 0.367788 * g - 0.071427 * b
    return y, u, v


def i420_from_rgb(rgb: np.ndarray, stride: int) -> np.ndarray:
    """Build a YUV420 array exactly as Picamera2's make_array returns it.

    The result has ``height * 3 / 2`` rows of ``stride`` bytes: the Y plane
    (``height`` rows), then the U and V planes, each ``height / 2`` rows of
    ``stride / 2`` bytes. Padding bytes are filled with values (255 in Y, 0 in
    U and V) that would show up as wrong colours if a reader used them.
    """
    height, width = rgb.shape[:2]
    assert width % 2 == 0 and height % 2 == 0 and stride >= width and stride % 2 == 0
    y, u, v = bt601_yuv(rgb)
    half_h, half_w, half_stride = height // 2, width // 2, stride // 2

    def subsample(plane: np.ndarray) -> np.ndarray:
        return plane.reshape(half_h, 2, half_w, 2).mean(axis=(1, 3))

    y_plane = np.full((height, stride), 255, np.uint8)
    y_plane[:, :width] = np.clip(np.rint(y), 0, 255)
    chroma = []
    for plane in (subsample(u), subsample(v)):
        padded = np.zeros((half_h, half_stride), np.uint8)
        padded[:, :half_w] = np.clip(np.rint(plane), 0, 255)
        chroma.append(padded.ravel())
    flat = np.concatenate([y_plane.ravel(), *chroma])
    return flat.reshape(height * 3 // 2, stride)


def _packed(order: tuple[int, ...], alpha: bool):
    def build(rgb: np.ndarray, stride: int) -> np.ndarray:
        channels = [rgb[..., i] for i in order]
        if alpha:
            channels.append(np.full(rgb.shape[:2], 255, np.uint8))
        return np.ascontiguousarray(np.stack(channels, axis=-1).astype(np.uint8))

    return build


# Byte order in memory of each Picamera2 format, as its manual describes them.
_BUILDERS = {
    "YUV420": i420_from_rgb,
    "XRGB8888": _packed((2, 1, 0), alpha=True),  # [B, G, R, 255]
    "XBGR8888": _packed((0, 1, 2), alpha=True),  # [R, G, B, 255]
    "RGB888": _packed((2, 1, 0), alpha=False),  # [B, G, R]
    "BGR888": _packed((0, 1, 2), alpha=False),  # [R, G, B]
}
_BYTES_PER_PIXEL = {"YUV420": 1, "XRGB8888": 4, "XBGR8888": 4, "RGB888": 3, "BGR888": 3}


def stream_shape(stream: dict[str, Any]) -> tuple[int, ...]:
    """The shape of the array make_array returns for a configured stream."""
    width, height = stream["size"]
    if stream["format"] == "YUV420":
        return (height * 3 // 2, stream["stride"])
    return (height, width, _BYTES_PER_PIXEL[stream["format"]])


def stream_array(stream: dict[str, Any], rgb: np.ndarray) -> np.ndarray:
    """The array make_array returns for ``stream`` showing the picture ``rgb``."""
    width, height = stream["size"]
    assert rgb.shape[:2] == (height, width), (rgb.shape, stream["size"])
    return _BUILDERS[stream["format"]](rgb, stream["stride"])


@dataclass
class CameraRecord:
    """What one FakePicamera2 was asked to do, for tests to inspect.

    ``configurations`` holds each configuration as it was passed to configure;
    ``configured`` the one the camera settled on, with the strides filled in.
    """

    camera_num: int
    configurations: list[dict[str, Any]] = field(default_factory=list)
    configured: dict[str, Any] = field(default_factory=dict)
    controls: list[dict[str, Any]] = field(default_factory=list)
    previews: list[tuple[Preview, dict[str, Any]]] = field(default_factory=list)
    preview_stops: int = 0
    overlays: list[np.ndarray | None] = field(default_factory=list)
    start_count: int = 0
    stop_count: int = 0
    close_count: int = 0
    cancels: int = 0
    arrays_made: list[str] = field(default_factory=list)
    requests_out: int = 0
    stalls: int = 0
    hung: bool = False

    @property
    def closed(self) -> bool:
        return self.close_count > 0


@dataclass
class FakeCameraRig:
    """The simulated camera hardware that every FakePicamera2 of a test shares.

    Switches:
        cameras: What global_camera_info lists; empty means no camera.
        missing_for: global_camera_info lists nothing for this many more calls.
        busy_opens: This many more constructions fail as if another process
            held the camera.
        start_errors: Messages start() raises, one per call, first to last.
        stall_captures: This many more capture_request calls get no frame.
        stalled: No capture_request ever gets a frame.
        overlay_plane: Whether the screen has a plane for overlays.
        drm_device: Whether a DRM device is there for the DRM preview.
        stride_align: Row alignment, in bytes, of the YUV420 Y plane.
        scene_rgb: The flat colour frames show when none were pushed.
    """

    cameras: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {
                "Model": "imx708",
                "Location": 2,
                "Rotation": 180,
                "Id": "/base/axi/pcie@120000/rp1/i2c@88000/imx708@1a",
                "Num": 0,
            }
        ]
    )
    missing_for: int = 0
    busy_opens: int = 0
    start_errors: list[str] = field(default_factory=list)
    stall_captures: int = 0
    stalled: bool = False
    overlay_plane: bool = True
    drm_device: bool = True
    stride_align: int = 64
    scene_rgb: tuple[int, int, int] = (90, 140, 200)
    controls: tuple[str, ...] = (
        "FrameDurationLimits",
        "NoiseReductionMode",
        "ExposureTime",
        "AnalogueGain",
        "ScalerCrop",
    )
    records: list[CameraRecord] = field(default_factory=list)
    info_calls: int = 0
    open_attempts: int = 0
    frames: deque[dict[str, Any]] = field(default_factory=deque)

    def push(
        self,
        *,
        main: np.ndarray | None = None,
        lores: np.ndarray | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Queue the arrays (as make_array returns them) of the next frame."""
        self.frames.append({"main": main, "lores": lores, "metadata": metadata})


class FakeRequest:
    """picamera2.CompletedRequest: one frame's buffers, held until released."""

    def __init__(self, picam2, arrays, metadata):
        self.picam2 = picam2
        self.config = picam2.camera_config.copy()
        self.ref_count = 1
        self._arrays = arrays
        self._metadata = metadata
        self._record = picam2._record

    def acquire(self):
        if self.ref_count == 0:
            raise RuntimeError("CompletedRequest: acquiring lock with ref_count 0")
        self.ref_count += 1

    def release(self):
        self.ref_count -= 1
        if self.ref_count < 0:
            raise RuntimeError("CompletedRequest: lock now has negative ref_count")
        if self.ref_count == 0:
            self._record.requests_out -= 1

    def get_metadata(self):
        assert self.ref_count > 0, "metadata read from a released request"
        return dict(self._metadata)

    def make_array(self, name):
        assert self.ref_count > 0, "array made from a released request"
        if self.config.get(name, None) is None:
            raise RuntimeError(f"Stream {name!r} is not defined")
        self._record.arrays_made.append(name)
        return np.copy(self._arrays[name])


class FakePicamera2:
    """picamera2.Picamera2 with the camera simulated by a FakeCameraRig."""

    platform = Platform.VC4
    _rig = FakeCameraRig()

    @staticmethod
    def global_camera_info():
        rig = FakePicamera2._rig
        rig.info_calls += 1
        if rig.missing_for > 0:
            rig.missing_for -= 1
            return []
        return [dict(info) for info in rig.cameras]

    def __init__(self, camera_num=0, verbose_console=None, tuning=None, allocator=None):
        rig = self._rig
        rig.open_attempts += 1
        self._preview = None
        self._event_loop_running = False
        self.is_open = False
        self.camera = None
        self.camera_config = {}
        self.started = False
        if camera_num >= len(self.global_camera_info()):
            raise RuntimeError(
                f'No camera number {camera_num} found - use "rpicam-hello '
                '--list-cameras" to check connected cameras'
            )
        if rig.busy_opens > 0:
            rig.busy_opens -= 1
            cause = RuntimeError("Failed to acquire camera: Device or resource busy")
            raise RuntimeError("Camera __init__ sequence did not complete.") from cause
        self.camera_idx = camera_num
        self.camera = rig.cameras[camera_num]
        self.is_open = True
        self._jobs: list[threading.Event] = []
        self._overlay_plane = None
        self._record = CameraRecord(camera_num)
        rig.records.append(self._record)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_val, exc_traceback):
        self.close()

    @property
    def camera_properties(self):
        if self.camera is None:
            return {}
        return {
            "Model": self.camera["Model"],
            "Location": self.camera.get("Location", 2),
            "Rotation": self.camera.get("Rotation", 0),
            "ColorFilterArrangement": 0,
            "PixelArraySize": (4608, 2592),
        }

    def _stream(self, defaults, updates):
        if updates is None:
            return None
        valid = ("format", "size", "stride", "preserve_ar")
        for key, value in updates.items():
            if key not in valid:
                raise ValueError(
                    f"Bad key {key!r}: valid stream configuration keys are {valid}"
                )
            defaults[key] = value
        width, height = defaults["size"]
        defaults["size"] = (width - width % 2, height - height % 2)
        return defaults

    def _configuration(self, main, lores, raw, extra, defaults):
        if self.camera is None:
            raise RuntimeError("Camera not opened")
        main = self._stream(defaults | {"preserve_ar": True}, main)
        lores = self._stream(
            {"format": "YUV420", "size": main["size"], "preserve_ar": False}, lores
        )
        raw = self._stream({"format": "SBGGR10_CSI2P", "size": main["size"]}, raw)
        config = {**extra, "main": main, "lores": lores, "raw": raw}
        display, encode = config["display"], config["encode"]
        if display is not None and config.get(display) is None:
            raise RuntimeError(f"Display stream {display} was not defined")
        if encode is not None and config.get(encode) is None:
            raise RuntimeError(f"Encode stream {encode} was not defined")
        return config

    def create_preview_configuration(
        self,
        main={},  # noqa: B006 - the real signature
        lores=None,
        raw={},  # noqa: B006
        transform=libcamera.Transform(),  # noqa: B008
        colour_space=libcamera.ColorSpace.Sycc(),  # noqa: B008
        buffer_count=4,
        controls={},  # noqa: B006
        display="main",
        encode="main",
        queue=True,
        sensor={},  # noqa: B006
        use_case="preview",
    ):
        controls = {
            "NoiseReductionMode": 1, "FrameDurationLimits": (100, 83333)
        } | controls
        extra = {
            "use_case": use_case, "transform": transform, "colour_space": colour_space,
            "buffer_count": buffer_count, "queue": queue, "controls": controls,
            "sensor": sensor, "display": display, "encode": encode,
        }
        defaults = {"format": "XBGR8888", "size": (640, 480)}
        return self._configuration(main, lores, raw, extra, defaults)

    def create_video_configuration(
        self,
        main={},  # noqa: B006 - the real signature
        lores=None,
        raw={},  # noqa: B006
        transform=libcamera.Transform(),  # noqa: B008
        colour_space=None,
        buffer_count=6,
        controls={},  # noqa: B006
        display="main",
        encode="main",
        queue=True,
        sensor={},  # noqa: B006
        use_case="video",
    ):
        controls = {
            "NoiseReductionMode": 2, "FrameDurationLimits": (33333, 33333)
        } | controls
        extra = {
            "use_case": use_case, "transform": transform, "colour_space": colour_space,
            "buffer_count": buffer_count, "queue": queue, "controls": controls,
            "sensor": sensor, "display": display, "encode": encode,
        }
        defaults = {"format": "XBGR8888", "size": (1280, 720)}
        config = self._configuration(main, lores, raw, extra, defaults)
        if colour_space is None:
            width, height = config["main"]["size"]
            small = width < 1280 or height < 720
            spaces = libcamera.ColorSpace
            config["colour_space"] = spaces.Smpte170m() if small else spaces.Rec709()
        return config

    def _check_stream(self, stream, name):
        if stream["format"] not in _BUILDERS:
            raise RuntimeError("Bad format " + stream["format"] + " in stream " + name)
        size = stream["size"]
        if type(size) is not tuple or len(size) != 2:
            raise RuntimeError("size in " + name + " stream should be (width, height)")
        if size[0] % 2 or size[1] % 2:
            raise RuntimeError("width and height should be even")

    def _check_controls(self, controls):
        for name in controls:
            real = "FrameDurationLimits" if name == "FrameRate" else name
            if real not in self._rig.controls:
                raise RuntimeError(f"Control {real} is not advertised by libcamera")

    def configure(self, camera_config=None):
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        if camera_config is None or isinstance(camera_config, str):
            camera_config = self.create_preview_configuration()
        self._record.configurations.append(copy.deepcopy(camera_config))
        config = camera_config.copy()
        self._check_stream(config["main"], "main")
        lores = config["lores"]
        if lores is not None:
            self._check_stream(lores, "lores")
            if lores["size"][0] > config["main"]["size"][0] or (
                lores["size"][1] > config["main"]["size"][1]
            ):
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            if self.platform == Platform.VC4 and lores["format"] != "YUV420":
                raise RuntimeError("lores stream must be YUV")
        self._check_controls(config["controls"])
        for name in ("main", "lores"):
            if config[name] is not None:
                stream = config[name]
                row = stream["size"][0] * _BYTES_PER_PIXEL[stream["format"]]
                stream["stride"] = _align(row, self._rig.stride_align)
        self.camera_config = config
        self._record.configured = config

    def camera_configuration(self):
        return self.camera_config

    def stream_configuration(self, name="main"):
        return self.camera_config[name]

    def set_controls(self, controls):
        self._check_controls(controls)
        self._record.controls.append(dict(controls))

    def start_preview(self, preview=None, **kwargs):
        if self._event_loop_running:
            raise RuntimeError("An event loop is already running")
        if preview is True:
            preview = Preview.DRM if os.getenv("DISPLAY") is None else Preview.QTGL
        elif preview is False or preview is None:
            preview = Preview.NULL
        unexpected = set(kwargs) - set(_PREVIEW_KWARGS.get(preview, ()))
        if unexpected:
            raise TypeError(f"unexpected preview arguments {sorted(unexpected)}")
        if preview is Preview.DRM and not self._rig.drm_device:
            name = kwargs.get("device") or "any display device"
            raise RuntimeError(
                f"DrmPreview: could not find a usable DRM device for {name}"
            )
        self._record.previews.append((preview, dict(kwargs)))
        self._preview = preview
        self._event_loop_running = True
        self._overlay_plane = None

    def stop_preview(self):
        if self._preview is None:
            raise RuntimeError("No preview specified.")
        self._record.preview_stops += 1
        self._preview = None
        self._event_loop_running = False

    def set_overlay(self, overlay):
        if self._preview is None:
            raise RuntimeError("No preview specified.")
        if overlay is not None and (overlay.ndim != 3 or overlay.shape[2] != 4):
            raise RuntimeError("Overlay must be a 4-channel image")
        if self._preview is not Preview.DRM:
            return
        if not self.camera_config:
            raise RuntimeError("Preview must be configured before setting an overlay")
        if self.camera_config["buffer_count"] < 2:
            raise RuntimeError("Need at least buffer_count=2 to set overlay")
        if not self._overlay_plane:
            raise RuntimeError("Overlays not supported on this device")
        self._record.overlays.append(None if overlay is None else np.copy(overlay))

    def start(self, config=None, show_preview=False):
        if not self.camera_config and config is None:
            config = "preview"
        if config is not None:
            self.configure(config)
        if not self.camera_config:
            raise RuntimeError("Camera has not been configured")
        if show_preview is not None and not self._event_loop_running:
            self.start_preview(show_preview)
        if self.started:
            return
        if self._rig.start_errors:
            raise RuntimeError(self._rig.start_errors.pop(0))
        self.started = True
        self._record.start_count += 1

    def stop(self):
        if not self.started:
            return
        if self._jobs and self._event_loop_running:
            # The real stop() queues behind the timed-out capture and waits for
            # ever; record that instead of hanging the test.
            self._record.hung = True
        self.started = False
        self._record.stop_count += 1

    def close(self):
        if self._preview:
            self.stop_preview()
        if not self.is_open:
            return
        self.stop()
        self.is_open = False
        self.camera = None
        self.camera_config = {}
        self._record.close_count += 1

    def cancel_all_and_flush(self):
        for job in self._jobs:
            job.set()
        self._jobs = []
        self._record.cancels += 1

    def capture_request(self, wait=None, signal_function=None, flush=None):
        if signal_function is not None or wait is False:
            raise NotImplementedError("the fake only captures synchronously")
        timeout = None if wait is None or wait is True else float(wait)
        rig = self._rig
        if rig.stalled or rig.stall_captures > 0 or not self.started:
            rig.stall_captures = max(0, rig.stall_captures - 1)
            return self._stall(timeout)
        if self._preview is Preview.DRM and self._overlay_plane is None:
            self._overlay_plane = rig.overlay_plane
        arrays, metadata = self._next_frame()
        self._record.requests_out += 1
        return FakeRequest(self, arrays, metadata)

    def _stall(self, timeout):
        assert timeout is not None, "capture_request without a timeout waits for ever"
        job = threading.Event()
        self._jobs.append(job)
        self._record.stalls += 1
        if job.wait(timeout):
            raise CancelledError()
        raise TimeoutError()

    def _next_frame(self):
        pushed = self._rig.frames.popleft() if self._rig.frames else {}
        arrays = {}
        for name in ("main", "lores"):
            stream = self.camera_config.get(name)
            if stream is None:
                continue
            array = pushed.get(name)
            if array is None:
                width, height = stream["size"]
                scene = np.empty((height, width, 3), np.uint8)
                scene[:] = self._rig.scene_rgb
                array = stream_array(stream, scene)
            assert array.shape == stream_shape(stream), (name, array.shape, stream)
            arrays[name] = array
        duration = self.camera_config["controls"]["FrameDurationLimits"][0]
        metadata = {
            "SensorTimestamp": time.monotonic_ns(),
            "ExposureTime": min(duration, 20000),
            "FrameDuration": duration,
        }
        metadata.update(pushed.get("metadata") or {})
        return arrays, metadata
