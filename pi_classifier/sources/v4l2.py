"""USB and other V4L2 cameras through OpenCV, read on a thread with bounded waits.

OpenCV's ``VideoCapture.read()`` has no timeout of its own for V4L2: the
``CAP_PROP_OPEN_TIMEOUT_MSEC`` and ``CAP_PROP_READ_TIMEOUT_MSEC`` properties
exist in OpenCV 4.11 and 5 but only the FFmpeg and GStreamer back-ends honour
them. So each capture is owned by a reader thread that opens, configures and
reads it, and ``read(timeout)`` waits for that thread's next frame on a
condition with a deadline. A driver that stops answering can still hold the
reader thread inside OpenCV; ``OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT`` (whole
seconds, read by OpenCV once per process) is set to about ``frame_timeout`` so
that thread comes back and releases the device soon after.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import logging
import math
import os
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from pi_classifier.config import CameraConfig
from pi_classifier.errors import SourceError
from pi_classifier.frames import Frame
from pi_classifier.sources.base import FrameSource
from pi_classifier.sources.common import natural_key

log = logging.getLogger(__name__)

#: Where V4L2 device nodes are looked for when no device is configured.
DEVICE_GLOB = "/dev/video*"

SELECT_TIMEOUT_ENV = "OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT"

# struct v4l2_capability: driver[16], card[32], bus_info[32], version,
# capabilities, device_caps, reserved[3]; VIDIOC_QUERYCAP = _IOR('V', 0, it).
_CAPABILITY = struct.Struct("=16s32s32sIII12x")
_VIDIOC_QUERYCAP = (2 << 30) | (_CAPABILITY.size << 16) | (ord("V") << 8)
_CAP_VIDEO_CAPTURE = 0x00000001
_CAP_VIDEO_CAPTURE_MPLANE = 0x00001000
_CAP_VIDEO_M2M = 0x00008000
_CAP_VIDEO_M2M_MPLANE = 0x00004000
_CAP_DEVICE_CAPS = 0x80000000

#: Pause after a failed read before the reader thread tries again.
_RETRY_PAUSE = 0.05


def video_devices() -> list[str]:
    """List the V4L2 device nodes that exist, ``video2`` before ``video10``.

    Returns:
        The paths matching ``DEVICE_GLOB``; empty when there are none.

    """
    return sorted(glob.glob(DEVICE_GLOB), key=natural_key)


def query_card(path: str) -> tuple[str, bool] | None:
    """Ask a device node its name and whether it captures video.

    Args:
        path: A device node such as ``/dev/video0``.

    Returns:
        (card name, captures video), or None when the node cannot be asked
        (no permission, busy). Memory-to-memory nodes such as the Raspberry
        Pi's codec and ISP, and UVC metadata nodes, do not capture video.

    """
    try:
        handle = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        raw = fcntl.ioctl(handle, _VIDIOC_QUERYCAP, bytes(_CAPABILITY.size))
    except OSError as error:
        return ("", False) if error.errno in (errno.ENOTTY, errno.EINVAL) else None
    finally:
        os.close(handle)
    return _parse_capability(raw)


def _parse_capability(raw: bytes) -> tuple[str, bool]:
    """Turn a v4l2_capability record into (card name, captures video)."""
    _, card, _, _, capabilities, device_caps = _CAPABILITY.unpack(raw)
    caps = device_caps if capabilities & _CAP_DEVICE_CAPS else capabilities
    captures = bool(caps & (_CAP_VIDEO_CAPTURE | _CAP_VIDEO_CAPTURE_MPLANE))
    memory_to_memory = bool(caps & (_CAP_VIDEO_M2M | _CAP_VIDEO_M2M_MPLANE))
    name = card.split(b"\0", 1)[0].decode("utf-8", "replace")
    return name, captures and not memory_to_memory


def capture_devices(nodes: list[str]) -> list[str]:
    """Keep the device nodes that capture video, or that cannot be asked.

    Args:
        nodes: Device nodes, as ``video_devices()`` lists them.

    Returns:
        The nodes worth opening, in the same order.

    """
    found = []
    for path in nodes:
        card = query_card(path)
        if card is None or card[1]:
            found.append(path)
        else:
            log.debug("skipping %s: it does not capture video", path)
    return found


def no_camera_reason(nodes: list[str]) -> str:
    """Say why a list of device nodes holds no camera.

    Args:
        nodes: The device nodes that exist.

    Returns:
        A phrase such as ``no /dev/video* devices``.

    """
    if not nodes:
        return "no /dev/video* devices"
    return f"none of {', '.join(nodes)} captures video"


def fourcc_text(code: float) -> str:
    """Spell a FOURCC number as its four letters, such as ``MJPG``."""
    number = int(code)
    letters = "".join(chr((number >> shift) & 0xFF) for shift in (0, 8, 16, 24))
    return letters.strip("\0 ") or "unknown"


def _device_argument(device: str) -> str | int:
    """Turn a configured device into what OpenCV opens: a path or an index."""
    return int(device) if device.isdigit() else device


def _device_path(device: str) -> str:
    """Name a configured device as its node path, for messages."""
    return f"/dev/video{device}" if device.isdigit() else device


def _reason(error: Exception) -> str:
    """Say briefly why an OpenCV call failed."""
    return str(getattr(error, "err", "") or error or type(error).__name__)


def _bound_driver_waits(frame_timeout: float) -> int:
    """Make OpenCV's per-frame select() give up after about frame_timeout."""
    seconds = max(1, math.ceil(frame_timeout))
    os.environ.setdefault(SELECT_TIMEOUT_ENV, str(seconds))
    try:
        return max(1, int(os.environ[SELECT_TIMEOUT_ENV]))
    except ValueError:
        return 10  # OpenCV's own default when the variable is not a number


class _Reader(threading.Thread):
    """Owns one OpenCV capture: opens, configures and reads it on its thread.

    Every OpenCV call on the capture happens on this thread, so a driver that
    hangs never blocks the caller, and the capture is released here too.
    """

    def __init__(
        self, device: str, camera: CameraConfig, capture_class: Callable[..., Any]
    ) -> None:
        super().__init__(name=f"v4l2-reader {device}", daemon=True)
        self.device = device
        self.path = _device_path(device)
        self._camera = camera
        self._capture_class = capture_class
        self._stop_event = threading.Event()
        self._changed = threading.Condition()
        self._image: np.ndarray | None = None
        self._timestamp = 0.0
        self._count = 0
        self._failure: str | None = None

    def run(self) -> None:
        """Open the device, then keep the newest frame until told to stop."""
        capture = self._open()
        if capture is None:
            return

        try:
            self._read_loop(capture)
        except Exception as error:  # the consumer needs to hear of any failure
            self._fail(f"V4L2 device {self.path} failed: {_reason(error)}")
        finally:
            capture.release()
            log.debug("released %s", self.path)

    def _open(self) -> Any:
        """Open and configure the capture, or record why it cannot be."""
        try:
            capture = self._capture_class(_device_argument(self.device), cv2.CAP_V4L2)
            if not capture.isOpened():
                capture.release()
                self._fail(f"cannot open V4L2 device {self.path}")
                return None
            self._configure(capture)
        except Exception as error:  # the consumer needs to hear of any failure
            self._fail(f"cannot open V4L2 device {self.path}: {_reason(error)}")
            return None
        return capture

    def _configure(self, capture: Any) -> None:
        """Ask for MJPG, the size and the rate, then log what was granted."""
        self._request_mjpg(capture)
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, self._camera.width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self._camera.height)
        capture.set(cv2.CAP_PROP_FPS, self._camera.fps)
        log.info(
            "V4L2 %s: %dx%d at %.3g fps, format %s",
            self.path,
            int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            capture.get(cv2.CAP_PROP_FPS),
            fourcc_text(capture.get(cv2.CAP_PROP_FOURCC)),
        )

    def _request_mjpg(self, capture: Any) -> None:
        """Switch to MJPG when the device takes it, else keep its own format."""
        original = capture.get(cv2.CAP_PROP_FOURCC)
        mjpg = cv2.VideoWriter.fourcc(*"MJPG")
        capture.set(cv2.CAP_PROP_FOURCC, mjpg)
        if int(capture.get(cv2.CAP_PROP_FOURCC)) == mjpg:
            return

        log.info(
            "%s does not offer MJPG; using its default format %s",
            self.path,
            fourcc_text(original),
        )
        if original:
            capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*"YUYV"))

    def _read_loop(self, capture: Any) -> None:
        """Read frames as the camera delivers them, keeping only the newest."""
        while not self._stop_event.is_set():
            ok, image = capture.read()
            if ok and image is not None:
                self._publish(image, time.monotonic())
            else:
                self._stop_event.wait(_RETRY_PAUSE)

    def _publish(self, image: np.ndarray, timestamp: float) -> None:
        """Offer a new frame to the waiting consumer."""
        with self._changed:
            self._image, self._timestamp = image, timestamp
            self._count += 1
            self._changed.notify_all()

    def _fail(self, message: str) -> None:
        """Record why the reader gave up and wake the consumer."""
        log.debug("%s", message)
        with self._changed:
            self._failure = message
            self._changed.notify_all()

    def wait_frame(
        self, after: int, deadline: float
    ) -> tuple[int, np.ndarray, float] | None:
        """Wait for a frame newer than number ``after``, until ``deadline``.

        Returns:
            (number, image, timestamp), or None when the deadline passed.

        Raises:
            SourceError: The reader failed or was stopped.

        """
        with self._changed:
            while self._count <= after:
                if self._failure is not None:
                    raise SourceError(self._failure)
                if self._stop_event.is_set():
                    raise SourceError(f"V4L2 device {self.path} was closed")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)
            assert self._image is not None
            return self._count, self._image, self._timestamp

    def stop(self, timeout: float) -> None:
        """Tell the thread to stop and wait up to ``timeout`` s for it to end."""
        self._stop_event.set()
        with self._changed:
            self._changed.notify_all()
        if self.is_alive():
            self.join(timeout)
        if self.is_alive():
            log.warning(
                "the reader of %s is still waiting on the driver; it releases "
                "the device when the driver answers",
                self.path,
            )


class V4L2Source(FrameSource):
    """A V4L2 camera, such as a USB webcam, read through OpenCV.

    With ``camera.device`` unset, the first ``/dev/video*`` node that captures
    video, opens and delivers a frame within ``camera.frame_timeout`` is used.
    The device sets the pace: ``read()`` returns the next frame the camera
    delivers, and frames the caller was too slow for are dropped, so what it
    gets is always the newest picture.
    """

    name = "v4l2"

    def __init__(
        self, camera: CameraConfig, *, capture_class: Callable[..., Any] | None = None
    ) -> None:
        self._camera = camera
        self._capture_class = capture_class or cv2.VideoCapture
        self._reader: _Reader | None = None
        self._last = 0
        self._sequence = 0
        self._stop_timeout = 1.0
        self.device: str | None = camera.device
        self.description = f"V4L2 camera {camera.device or '(first found)'}"

    def open(self) -> None:
        """Open the configured device, or the first one that works.

        Raises:
            SourceError: No device could be opened or none delivered a frame
                within ``camera.frame_timeout``; the message names each one.

        """
        if self._reader is not None:
            return

        self._stop_timeout = _bound_driver_waits(self._camera.frame_timeout) + 0.5
        candidates = self._candidates()
        failures = []
        for device in candidates:
            try:
                self._reader = self._start(device)
            except SourceError as error:
                failures.append(str(error))
                continue
            self.device = _device_path(device)
            self.description = f"V4L2 camera {self.device}"
            return

        raise SourceError(self._no_device_message(failures))

    def _candidates(self) -> list[str]:
        """List the devices to try: the configured one, or every capturing node."""
        if self._camera.device:
            return [self._camera.device]

        nodes = video_devices()
        found = capture_devices(nodes)
        if not found:
            raise SourceError(f"no V4L2 camera found: {no_camera_reason(nodes)}")
        return found

    @staticmethod
    def _no_device_message(failures: list[str]) -> str:
        """Say why every candidate device failed."""
        if len(failures) == 1:
            return failures[0]
        return "no V4L2 device delivered frames: " + "; ".join(failures)

    def _start(self, device: str) -> _Reader:
        """Start a reader on one device and wait for its first frame."""
        path = _device_path(device)
        if path.startswith("/") and not os.path.exists(path):
            raise SourceError(f"V4L2 device {path} does not exist")
        if path.startswith("/") and not os.access(path, os.R_OK | os.W_OK):
            raise SourceError(
                f"no permission to open V4L2 device {path} (is this user in the "
                "video group?)"
            )

        reader = _Reader(device, self._camera, self._capture_class)
        reader.start()
        deadline = time.monotonic() + self._camera.frame_timeout
        try:
            first = reader.wait_frame(0, deadline)
        except SourceError:
            reader.stop(self._stop_timeout)
            raise
        if first is None:
            reader.stop(self._stop_timeout)
            raise SourceError(
                f"V4L2 device {path} delivered no frame within "
                f"{self._camera.frame_timeout:g} s"
            )

        self._last = first[0] - 1  # the first frame is the first read()
        self._sequence = 0
        card = query_card(path) if path.startswith("/") else None
        name = f" ({card[0]})" if card and card[0] else ""
        log.info("using V4L2 camera %s%s", path, name)
        return reader

    def read(self, timeout: float) -> Frame:
        """Return the next frame the camera delivers, waiting at most ``timeout``.

        Args:
            timeout: The longest time to wait, in seconds.

        Returns:
            The newest frame, stamped with ``time.monotonic()`` when the
            reader thread received it.

        Raises:
            SourceError: The source is not open, the device failed, or no new
                frame came within ``timeout``.

        """
        reader = self._reader
        if reader is None:
            raise SourceError("the V4L2 camera is not open")

        got = reader.wait_frame(self._last, time.monotonic() + timeout)
        if got is None:
            raise SourceError(
                f"timed out waiting for a frame from V4L2 device {reader.path} "
                f"({timeout:g} s)"
            )

        count, image, timestamp = got
        if count > self._last + 1:
            log.debug("dropped %d frames from %s", count - self._last - 1, reader.path)
        self._last = count
        frame = Frame(image=image, sequence=self._sequence, timestamp=timestamp)
        self._sequence += 1
        return frame

    def close(self) -> None:
        """Stop the reader thread and release the device; safe to call twice."""
        reader, self._reader = self._reader, None
        if reader is None:
            return

        reader.stop(self._stop_timeout)
        log.info("closed V4L2 camera %s", reader.path)
