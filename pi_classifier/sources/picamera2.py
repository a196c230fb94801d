"""Frames from the Raspberry Pi camera through Picamera2, with a lores stream."""

from __future__ import annotations

import concurrent.futures
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pi_classifier.config import CameraConfig
from pi_classifier.errors import (
    ConfigError,
    DisplayError,
    PiClassifierError,
    SourceError,
)
from pi_classifier.frames import Frame
from pi_classifier.sources.base import FrameSource

log = logging.getLogger(__name__)

# Naming rule that tests/test_picamera2_contract.py relies on to find every use
# of the real API in this module and in displays/drm.py: the Picamera2 object
# is always called ``picam2``, its requests ``request`` and the class itself
# ``picamera2_class``.

DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
CLOSE_TIMEOUT = 5.0
# "RGB888" holds the bytes [B, G, R]: an OpenCV BGR picture as it comes.
MAIN_FORMAT = "RGB888"
# The DRM preview scans the main stream out itself; 32-bit pixels suit every plane.
PREVIEW_MAIN_FORMAT = "XRGB8888"
YUV_LORES_FORMAT = "YUV420"
# "BGR888" holds the bytes [R, G, B]: what the model wants, with no conversion.
RGB_LORES_FORMAT = "BGR888"
_PISP_BOARDS = ("Raspberry Pi 5", "Compute Module 5")
_GIVE_UP = {
    "missing": "no camera was found after {tries} tries; check the ribbon cable "
    "and that `rpicam-hello --list-cameras` lists the camera",
    "busy": "the camera stayed in use by another program for {tries} tries; stop "
    "other camera programs (rpicam-apps, another pi-classifier) and try again",
}


def picamera2_available() -> bool:
    """Tell whether Picamera2 imports and lists at least one camera.

    Returns:
        True when ``Picamera2.global_camera_info()`` lists a camera.

    """
    try:
        from picamera2 import Picamera2

        cameras = Picamera2.global_camera_info()
    except Exception as error:
        log.debug("Picamera2 is not usable here: %s", error)
        return False
    return len(cameras) > 0


def _import_picamera2_class() -> type:
    """Import the real Picamera2 class, or explain how to install it."""
    try:
        from picamera2 import Picamera2
    except Exception as error:
        raise SourceError(
            f"Picamera2 cannot be imported ({error}); on Raspberry Pi OS install "
            "python3-picamera2 with apt and give the virtual environment "
            "--system-site-packages"
        ) from None
    return Picamera2


def _even_up(value: int) -> int:
    """Round up to an even number, as YUV420 streams require."""
    return value + value % 2


def _even_down(value: int) -> int:
    """Round down to an even number, as Picamera2 does for stream sizes."""
    return value - value % 2


def lores_size(
    main_size: tuple[int, int], model_size: tuple[int, int], crop: str
) -> tuple[int, int]:
    """Choose the lores stream size for the model.

    With ``crop="center"`` the lores stream keeps the main stream's aspect ratio
    and just covers the model size, so a centre crop gives the model input with
    no resize at all; with ``crop="none"`` it is the model size itself (the whole
    field of view, squeezed). Sizes are rounded up to even numbers, as the ISP
    requires for YUV420, and kept within the main stream.

    Args:
        main_size: The main stream (width, height).
        model_size: The model input (width, height).
        crop: "center" or "none".

    Returns:
        The lores (width, height).

    """
    main_w, main_h = main_size
    model_w, model_h = model_size
    width, height = model_w, model_h
    if crop == "center":
        if model_w * main_h >= model_h * main_w:
            height = -(-model_w * main_h // main_w)
        else:
            width = -(-model_h * main_w // main_h)
    return min(_even_up(width), main_w), min(_even_up(height), main_h)


def yuv420_to_rgb(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Convert a Picamera2 YUV420 array to RGB.

    Picamera2 returns YUV420 as ``height * 3 / 2`` rows of ``stride`` bytes: the
    Y plane with its padding, then the U and V planes at half the stride. That is
    I420 at width ``stride``, so it is converted whole and the padding columns
    are cut off afterwards (a view, no copy). OpenCV uses the BT.601 matrix,
    which is what the camera delivers below 1280x720; above that Picamera2 picks
    Rec.709 and hues shift by a few percent, harmless to a classifier.

    Args:
        array: The array from ``request.make_array("lores")``.
        size: The stream's (width, height).

    Returns:
        An RGB uint8 view, height x width x 3.

    Raises:
        SourceError: The array does not have the YUV420 layout of ``size``.

    """
    width, height = size
    rows, stride = array.shape[:2]
    if array.ndim != 2 or rows != height * 3 // 2 or stride < width:
        raise SourceError(
            f"the camera's lores array has shape {array.shape}, not the YUV420 "
            f"layout of a {width}x{height} stream"
        )
    rgb = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_YUV2RGB_I420)
    return rgb[:, :width]


def fit_model_input(
    rgb: np.ndarray, model_size: tuple[int, int], crop: str
) -> np.ndarray:
    """Cut and scale a lores picture to the model input.

    Args:
        rgb: The lores picture, RGB uint8.
        model_size: The model input (width, height).
        crop: "center" to cut the centre at the model's aspect ratio first,
            "none" to scale the whole picture.

    Returns:
        A contiguous RGB uint8 array of the model size.

    """
    height, width = rgb.shape[:2]
    model_w, model_h = model_size
    if crop == "center":
        crop_w = min(width, height * model_w // model_h)
        crop_h = min(height, width * model_h // model_w)
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        rgb = rgb[top : top + crop_h, left : left + crop_w]

    if rgb.shape[:2] != (model_h, model_w):
        rgb = cv2.resize(rgb, (model_w, model_h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb)


def _board_model() -> str:
    """Read the board name from the device tree; "" where there is none."""
    try:
        return DEVICE_TREE_MODEL.read_bytes().rstrip(b"\0").decode(errors="replace")
    except OSError:
        return ""


def _is_pisp(picamera2_class: type) -> bool:
    """Tell whether the ISP is the Pi 5's PiSP, which can give RGB lores.

    Picamera2's own platform check decides what it accepts, so it is trusted
    when it has one; the device tree answers only for a Picamera2 without it.
    """
    try:
        platform = picamera2_class.platform
    except AttributeError:
        platform = None
    name = getattr(platform, "name", None)
    if name is not None:
        return name == "PISP"
    model = _board_model()
    return any(board in model for board in _PISP_BOARDS)


def _drm_preview_kind(picamera2_class: type) -> Any:
    """Find ``Preview.DRM`` in the module that defines the Picamera2 class."""
    module = sys.modules[picamera2_class.__module__]
    return module.Preview.DRM


def _error_text(error: BaseException) -> str:
    """Join the messages of an error and the errors that caused it."""
    texts = []
    seen: BaseException | None = error
    while seen is not None and len(texts) < 5:
        texts.append(str(seen) or type(seen).__name__)
        seen = seen.__cause__ or seen.__context__
    return ": ".join(texts)


def _failure_kind(error: Exception) -> str:
    """Sort an opening failure into "busy", "missing", or raise it as final.

    Raises:
        PiClassifierError: ``error`` itself when it already is one.
        SourceError: The failure will not go away by retrying.

    """
    if isinstance(error, PiClassifierError):
        raise error
    text = _error_text(error)
    lowered = text.lower()
    if "busy" in lowered or "in use" in lowered:
        return "busy"
    if isinstance(error, IndexError) or "no camera" in lowered or (
        "not found" in lowered and "camera" in lowered
    ):
        return "missing"
    raise SourceError(f"the camera could not be started: {text}") from None


def _close_quietly(picam2: Any) -> None:
    """Close a Picamera2 object, logging rather than raising a failure."""
    try:
        picam2.close()
    except Exception as error:
        log.warning("closing the camera failed: %s", error)


class Picamera2Source(FrameSource):
    """The Raspberry Pi camera through Picamera2.

    Two streams are configured: ``main`` at the configured size for the screen
    and ``lores`` sized for the model, so that inference needs no big resize.
    The lores stream is YUV420 (converted with OpenCV) up to the Pi 4 and RGB on
    a Pi 5 unless ``camera.lores_format`` says otherwise.

    In DRM preview mode (see ``start_drm_preview``) Picamera2 puts the main
    stream on the screen itself and only the lores array reaches the CPU; each
    Frame's image is then the lores picture in BGR.

    A missing or busy camera is retried with a doubling pause; a camera that
    stops delivering frames is closed and reopened. Each gives up with a
    SourceError after ``open_tries`` attempts in a row, so ``read`` can take
    longer than its timeout while it recovers: at most ``open_tries`` times the
    timeout plus the pauses.
    """

    name = "picamera2"

    def __init__(
        self,
        camera: CameraConfig,
        model_size: tuple[int, int],
        *,
        picamera2_class: type | None = None,
        crop: str = "center",
        open_tries: int = 6,
        backoff: tuple[float, float] = (0.5, 8.0),
    ) -> None:
        """Prepare the source; nothing is opened until ``open``.

        Args:
            camera: The camera section of the configuration.
            model_size: The model input (width, height).
            picamera2_class: The Picamera2 class to use; None imports the real
                one at ``open``.
            crop: "center" or "none", as the ``crop`` configuration key.
            open_tries: Attempts to open a missing or busy camera, and stalls
                in a row, before giving up.
            backoff: The first and the longest pause between attempts, seconds.

        Raises:
            ConfigError: ``open_tries`` or ``backoff`` are out of range.

        """
        if open_tries < 1 or not 0 < backoff[0] <= backoff[1]:
            raise ConfigError(
                "the camera needs at least one try and a positive, increasing backoff"
            )
        self._camera = camera
        self._model_size = (int(model_size[0]), int(model_size[1]))
        self._picamera2_class = picamera2_class
        self._crop = crop
        self._tries = open_tries
        self._backoff = backoff
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._opened = False
        self._picam2: Any = None
        self._preview_window: tuple[int, int, int, int] | None = None
        self._preview_active = False
        self._rendered: Any = None
        self._overlay: np.ndarray | None = None
        self._overlay_on: Any = None
        self._sequence = 0
        self._main_size = (_even_down(camera.width), _even_down(camera.height))
        self._lores_size = lores_size(self._main_size, self._model_size, crop)
        self._lores_format = YUV_LORES_FORMAT

    @property
    def main_size(self) -> tuple[int, int]:
        """The main stream (width, height), as the camera last configured it."""
        return self._main_size

    @property
    def lores_size(self) -> tuple[int, int]:
        """The lores stream (width, height), as the camera last configured it."""
        return self._lores_size

    @property
    def lores_format(self) -> str:
        """The Picamera2 format of the lores stream: YUV420 or BGR888."""
        return self._lores_format

    @property
    def preview_only(self) -> bool:
        """Whether the main stream goes to the DRM preview instead of the CPU."""
        return self._preview_window is not None

    def open(self) -> None:
        """Open and start the camera; does nothing when it is already open.

        Raises:
            SourceError: Picamera2 is missing, or the camera stayed missing or
                busy for every try, or it cannot be started.
            DisplayError: The DRM preview cannot start.

        """
        with self._lock:
            if self._opened:
                return
            self._closing.clear()
            if self._picamera2_class is None:
                self._picamera2_class = _import_picamera2_class()
            self._lores_format = self._choose_lores_format()
            self._opened = True
            try:
                self._open_with_retries()
            except BaseException:
                self._opened = False
                raise

    def read(self, timeout: float) -> Frame:
        """Wait for the next frame; reopen the camera when it stalls.

        Args:
            timeout: The longest wait for one frame, in seconds.

        Returns:
            The frame, with the lores picture as its model input.

        Raises:
            SourceError: The camera is not open, or stalled ``open_tries``
                times in a row, or could not be reopened.

        """
        for stall in range(1, self._tries + 1):
            picam2, preview = self._running_camera()
            try:
                request = picam2.capture_request(wait=timeout)
            except concurrent.futures.TimeoutError:
                self._recover_from_stall(picam2, stall, timeout)
                continue
            except concurrent.futures.CancelledError:
                self._check_still_open()
                continue
            frame = self._frame_from(request, preview)
            self._after_render(picam2, preview)
            return frame
        raise SourceError(
            f"the camera delivered no frame within {timeout:g} s, {self._tries} "
            "times in a row, even after reopening it"
        )

    def close(self) -> None:
        """Stop and close the camera; safe to call twice and from any thread."""
        self._closing.set()
        with self._lock:
            picam2, self._picam2 = self._picam2, None
            was_open, self._opened = self._opened, False
        if picam2 is not None:
            self._release(picam2)
        if was_open:
            log.info("camera closed")

    def start_drm_preview(self, window: tuple[int, int, int, int]) -> None:
        """Show the main stream on the screen through DRM from now on.

        The camera is restarted in this mode by the next ``open``, ``read`` or
        ``check_overlay``. The CPU then takes only the lores array.

        Args:
            window: The preview rectangle (x, y, width, height) on the screen.

        """
        with self._lock:
            self._preview_window = window
            picam2, self._picam2 = self._picam2, None
        if picam2 is not None:
            self._release(picam2)

    def stop_drm_preview(self) -> None:
        """Stop the DRM preview; frames go to the CPU again from the next read."""
        with self._lock:
            if self._preview_window is None:
                return
            self._preview_window = None
            self._overlay = None
            picam2, self._picam2 = self._picam2, None
        if picam2 is not None:
            self._release(picam2)

    def check_overlay(self) -> None:
        """Wait for the first picture on screen and check labels can go over it.

        Picamera2's DRM preview reserves its overlay plane when it shows the
        first frame, and a capture returns only after that frame was shown, so
        one frame is read (and dropped) before the overlay is tried.

        Raises:
            SourceError: The camera sent no frame, as for ``read``.
            DisplayError: The screen has no overlay plane, or the source is
                not in DRM preview mode.

        """
        self.read(self._camera.frame_timeout)

        with self._lock:
            picam2 = self._picam2
            if not self._preview_active or picam2 is None:
                raise DisplayError("the camera is not showing a DRM preview to draw on")
            self._apply_overlay(picam2)

    def set_overlay(self, rgba: np.ndarray | None) -> None:
        """Draw an RGBA picture over the DRM preview (None removes it).

        The overlay is kept and drawn again whenever the camera is reopened. Until
        the preview has shown its first frame it waits for ``read``.

        Args:
            rgba: The overlay, height x width x 4 uint8, or None.

        Raises:
            DisplayError: The source is not in DRM preview mode, or the screen
                cannot take an overlay.

        """
        with self._lock:
            if self._preview_window is None:
                raise DisplayError("the camera is not showing a DRM preview to draw on")
            self._overlay = rgba
            picam2 = self._picam2
            if picam2 is not None and self._rendered is picam2:
                self._apply_overlay(picam2)

    def _choose_lores_format(self) -> str:
        """Pick YUV420 or RGB for the lores stream from the board and config."""
        choice = self._camera.lores_format
        if choice == "auto":
            choice = "rgb" if _is_pisp(self._picamera2_class) else "yuv420"
        log.debug("lores stream format: %s", choice)
        return RGB_LORES_FORMAT if choice == "rgb" else YUV_LORES_FORMAT

    def _running_camera(self) -> tuple[Any, bool]:
        """Return the started camera and its mode, reopening it when needed."""
        with self._lock:
            if not self._opened:
                raise SourceError("the camera is not open")
            if self._picam2 is None:
                self._open_with_retries()
            return self._picam2, self._preview_active

    def _open_with_retries(self) -> None:
        """Open and start the camera, retrying while it is missing or busy."""
        failure = ""
        for attempt in range(1, self._tries + 1):
            failure = self._try_open()
            if not failure:
                return
            if attempt < self._tries:
                delay = self._delay(attempt)
                log.warning(
                    "camera %s (try %d of %d); retrying in %.3g s",
                    failure, attempt, self._tries, delay,
                )
                self._pause(delay)
        log.error("camera %s after %d tries; giving up", failure, self._tries)
        raise SourceError(_GIVE_UP[failure].format(tries=self._tries))

    def _try_open(self) -> str:
        """Try once to open the camera.

        Returns:
            "" when the camera runs, else "missing" or "busy".

        """
        # A Picamera2 constructor that fails never hands its object back, so
        # what it took before failing (two pipe descriptors in picamera2
        # 0.3.38) cannot be released here; each failed try leaks that little.
        picamera2_class = self._picamera2_class
        try:
            index = self._camera_index(picamera2_class.global_camera_info())
            if index is None:
                return "missing"
            picam2 = picamera2_class(camera_num=index)
        except Exception as error:
            return _failure_kind(error)

        try:
            self._start(picam2)
        except BaseException as error:
            self._release(picam2)
            if not isinstance(error, Exception):
                raise
            return _failure_kind(error)

        self._picam2 = picam2
        self._rendered = None
        return ""

    def _camera_index(self, cameras: list[dict[str, Any]]) -> int | None:
        """Find the configured camera in Picamera2's list, or None."""
        device = self._camera.device
        if not device:
            index = 0 if cameras else None
        elif device.isdigit():
            index = int(device) if int(device) < len(cameras) else None
        else:
            names = [(info.get("Id"), info.get("Model")) for info in cameras]
            index = next((i for i, name in enumerate(names) if device in name), None)
        if index is None:
            log.debug("camera %r not among %s", device, cameras)
        return index

    def _start(self, picam2: Any) -> None:
        """Configure and start one opened camera, with its preview if any."""
        window = self._preview_window
        main_format = MAIN_FORMAT if window is None else PREVIEW_MAIN_FORMAT
        duration = round(1_000_000 / self._camera.fps)
        lores = lores_size(self._main_size, self._model_size, self._crop)
        config = picam2.create_video_configuration(
            main={"format": main_format, "size": self._main_size},
            lores={"format": self._lores_format, "size": lores},
            controls={"FrameDurationLimits": (duration, duration)},
        )
        picam2.configure(config)
        self._read_back(picam2)

        if window is not None:
            self._start_preview(picam2, window)
        picam2.start(show_preview=False)
        self._preview_active = window is not None
        log.info(
            "camera started: main %dx%d, lores %dx%d %s, %g fps%s",
            *self._main_size, *self._lores_size, self._lores_format,
            self._camera.fps, ", DRM preview" if window is not None else "",
        )

    def _start_preview(self, picam2: Any, window: tuple[int, int, int, int]) -> None:
        """Start Picamera2's DRM preview in the given rectangle."""
        x, y, width, height = window
        kind = _drm_preview_kind(self._picamera2_class)
        try:
            picam2.start_preview(kind, x=x, y=y, width=width, height=height)
        except RuntimeError as error:
            raise DisplayError(f"the DRM preview could not start: {error}") from None

    def _read_back(self, picam2: Any) -> None:
        """Note the stream sizes the camera settled on after configuring."""
        main = picam2.stream_configuration("main")
        lores = picam2.stream_configuration("lores")
        self._main_size = (int(main["size"][0]), int(main["size"][1]))
        self._lores_size = (int(lores["size"][0]), int(lores["size"][1]))

    def _delay(self, attempt: int) -> float:
        """Give the pause after a failed attempt: doubling, up to the longest."""
        first, longest = self._backoff
        return min(first * 2 ** (attempt - 1), longest)

    def _pause(self, delay: float) -> None:
        """Wait before the next attempt, ending early when the source closes.

        Raises:
            SourceError: The source was closed during the wait.

        """
        if self._closing.wait(delay):
            raise SourceError("the camera was closed while it was being opened")

    def _recover_from_stall(self, picam2: Any, stall: int, timeout: float) -> None:
        """Close a camera that delivered no frame, and pause before reopening."""
        with self._lock:
            self._check_still_open()
            owned = self._picam2 is picam2
            if owned:
                self._picam2 = None
        log.warning(
            "camera delivered no frame within %g s (stall %d of %d); reopening it",
            timeout, stall, self._tries,
        )
        if owned:
            self._release(picam2)
        if stall < self._tries:
            self._pause(self._delay(stall))

    def _check_still_open(self) -> None:
        """Raise when the source was closed while a frame was awaited.

        Raises:
            SourceError: The source is closed.

        """
        if not self._opened:
            raise SourceError("the camera was closed while a frame was awaited")

    def _release(self, picam2: Any) -> None:
        """Stop and close one camera, waiting at most CLOSE_TIMEOUT seconds.

        Any capture left waiting is cancelled first: Picamera2 would otherwise
        queue the stop behind it and wait for ever. Should libcamera itself never
        return, the closing thread is left behind and the camera stays held until
        the process exits.
        """
        try:
            picam2.cancel_all_and_flush()
        except Exception as error:
            log.debug("cancelling camera jobs failed: %s", error)
        closer = threading.Thread(
            target=_close_quietly, args=(picam2,), name="picamera2-close", daemon=True
        )
        closer.start()
        closer.join(CLOSE_TIMEOUT)
        if closer.is_alive():
            log.error(
                "the camera did not close within %g s; it stays held until "
                "pi-classifier exits", CLOSE_TIMEOUT,
            )

    def _frame_from(self, request: Any, preview: bool) -> Frame:
        """Copy the arrays out of a request, release it and build the Frame."""
        try:
            lores = request.make_array("lores")
            main = None if preview else request.make_array("main")
            metadata = request.get_metadata()
        finally:
            request.release()

        rgb = self._lores_rgb(lores)
        image = main if main is not None else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        frame = Frame(
            image=image,
            sequence=self._sequence,
            timestamp=self._timestamp(metadata),
            model_input=fit_model_input(rgb, self._model_size, self._crop),
        )
        self._sequence += 1
        return frame

    def _lores_rgb(self, lores: np.ndarray) -> np.ndarray:
        """Turn the lores array into an RGB picture."""
        if self._lores_format == YUV_LORES_FORMAT:
            return yuv420_to_rgb(lores, self._lores_size)
        return lores

    @staticmethod
    def _timestamp(metadata: dict[str, Any]) -> float:
        """Give the capture time on the monotonic clock.

        libcamera's SensorTimestamp is on that clock already; a value that is
        missing or implausible gives way to the time of arrival.
        """
        now = time.monotonic()
        sensor_ns = metadata.get("SensorTimestamp")
        if isinstance(sensor_ns, int) and 0 <= now - sensor_ns / 1e9 < 5.0:
            return sensor_ns / 1e9
        return now

    def _after_render(self, picam2: Any, preview: bool) -> None:
        """Draw a kept overlay once a reopened DRM preview shows its first frame."""
        if not preview:
            return
        with self._lock:
            if self._picam2 is not picam2:
                return
            self._rendered = picam2
            if self._overlay is not None and self._overlay_on is not picam2:
                try:
                    self._apply_overlay(picam2)
                except DisplayError as error:
                    log.warning("%s", error)

    def _apply_overlay(self, picam2: Any) -> None:
        """Hand the kept overlay to Picamera2, naming a missing overlay plane.

        Raises:
            DisplayError: Picamera2 refused the overlay.

        """
        try:
            picam2.set_overlay(self._overlay)
        except RuntimeError as error:
            if "not supported" in str(error):
                raise DisplayError(
                    "the screen has no overlay plane for the labels over the DRM "
                    "preview"
                ) from None
            raise DisplayError(f"the overlay could not be drawn: {error}") from None
        self._overlay_on = picam2
