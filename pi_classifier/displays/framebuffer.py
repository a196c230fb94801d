"""The Linux framebuffer display: frames written straight into /dev/fbN."""

from __future__ import annotations

import contextlib
import fcntl
import grp
import logging
import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pi_classifier.config import DisplayConfig
from pi_classifier.displays.base import Display
from pi_classifier.displays.console import ConsoleGuard
from pi_classifier.errors import DisplayError

log = logging.getLogger(__name__)

SYSFS_ROOT = Path("/sys/class/graphics")
FBIOGET_VSCREENINFO = 0x4600
# struct fb_var_screeninfo is forty 32-bit fields; the ones read here are
# xres, yres, xoffset, yoffset, bits_per_pixel and the red, green and blue
# bitfields (offset, length, msb_right each).
_VAR_SCREENINFO = struct.Struct("=40I")

# The pixel layouts written, keyed by bits per pixel and the (red offset,
# green length, blue offset) the kernel reports. Offsets count bits from the
# least significant end of a little-endian pixel, so red at 16 and blue at 0
# means the bytes in memory are B, G, R(, X). The Linux sysfs has no file
# for the channel order: it comes from the FBIOGET_VSCREENINFO ioctl, and
# when that cannot be asked the first layout of each size is assumed.
_LAYOUTS: dict[tuple[int, int, int, int], tuple[str, int | None]] = {
    (16, 11, 6, 0): ("RGB565", cv2.COLOR_BGR2BGR565),
    (16, 0, 6, 11): ("BGR565", cv2.COLOR_RGB2BGR565),
    (16, 10, 5, 0): ("RGB555", cv2.COLOR_BGR2BGR555),
    (16, 0, 5, 10): ("BGR555", cv2.COLOR_RGB2BGR555),
    (24, 16, 8, 0): ("24-bit, bytes B,G,R", None),
    (24, 0, 8, 16): ("24-bit, bytes R,G,B", cv2.COLOR_BGR2RGB),
    (32, 16, 8, 0): ("XRGB8888, bytes B,G,R,X", cv2.COLOR_BGR2BGRA),
    (32, 0, 8, 16): ("XBGR8888, bytes R,G,B,X", cv2.COLOR_BGR2RGBA),
}
_ASSUMED = {16: (11, 6, 0), 24: (16, 8, 0), 32: (16, 8, 0)}


@dataclass(frozen=True)
class ScreenInfo:
    """What the kernel reports about the visible screen and its pixels.

    Attributes:
        width: Visible width in pixels.
        height: Visible height in pixels.
        x_offset: First visible column of the (larger) virtual screen.
        y_offset: First visible row of the virtual screen.
        bits_per_pixel: Bits per pixel.
        red_offset: Bit offset of red in a pixel.
        green_length: Bits of green in a pixel.
        blue_offset: Bit offset of blue in a pixel.

    """

    width: int
    height: int
    x_offset: int
    y_offset: int
    bits_per_pixel: int
    red_offset: int
    green_length: int
    blue_offset: int


@dataclass(frozen=True)
class PixelFormat:
    """How a BGR frame is turned into framebuffer pixels.

    Attributes:
        name: The layout, for log lines.
        bytes_per_pixel: Bytes each pixel takes in memory.
        conversion: The ``cv2.cvtColor`` code from BGR, or None when the
            framebuffer takes BGR bytes as they are.

    """

    name: str
    bytes_per_pixel: int
    conversion: int | None


@dataclass(frozen=True)
class _Geometry:
    """The framebuffer memory as sysfs describes it."""

    width: int
    height: int
    bits_per_pixel: int
    stride: int


@dataclass
class _Placement:
    """Where frames of one size go on the screen, with their buffers."""

    source: tuple[int, int]
    target: np.ndarray
    scaled: np.ndarray | None
    resize: bool
    interpolation: int


def parse_screen_info(data: bytes) -> ScreenInfo:
    """Read the fields used here from a packed ``fb_var_screeninfo``.

    Args:
        data: The 160 bytes the FBIOGET_VSCREENINFO ioctl fills in.

    Returns:
        The visible geometry and the channel layout.

    """
    fields = _VAR_SCREENINFO.unpack(data)
    return ScreenInfo(
        width=fields[0],
        height=fields[1],
        x_offset=fields[4],
        y_offset=fields[5],
        bits_per_pixel=fields[6],
        red_offset=fields[8],
        green_length=fields[12],
        blue_offset=fields[14],
    )


def _query_screen_info(fd: int) -> ScreenInfo | None:
    """Ask the driver for the screen info; None when the file cannot answer."""
    buffer = bytearray(_VAR_SCREENINFO.size)
    try:
        fcntl.ioctl(fd, FBIOGET_VSCREENINFO, buffer)
    except OSError as error:
        log.debug("FBIOGET_VSCREENINFO failed (%s); assuming the usual layout",
                  error.strerror or error)
        return None
    return parse_screen_info(bytes(buffer))


def choose_pixel_format(
    bits_per_pixel: int, info: ScreenInfo | None, device: str = "the framebuffer"
) -> PixelFormat:
    """Choose how to convert frames for a framebuffer.

    Args:
        bits_per_pixel: Bits per pixel from sysfs.
        info: The channel layout from the driver, or None to assume the usual
            little-endian layout (RGB565; bytes B,G,R; bytes B,G,R,X).
        device: The device path, for error messages.

    Returns:
        The pixel format to write.

    Raises:
        DisplayError: The depth or the channel layout is not supported.

    """
    if bits_per_pixel not in _ASSUMED:
        raise DisplayError(
            f"framebuffer {device} uses {bits_per_pixel} bits per pixel; only 16, "
            "24 and 32 are supported"
        )
    layout = _ASSUMED[bits_per_pixel]
    if info is not None:
        layout = (info.red_offset, info.green_length, info.blue_offset)
    known = _LAYOUTS.get((bits_per_pixel, *layout))
    if known is None:
        raise DisplayError(
            f"framebuffer {device} has an unsupported {bits_per_pixel}-bit layout "
            f"(red at bit {layout[0]}, blue at bit {layout[2]})"
        )
    name, conversion = known
    return PixelFormat(name, bits_per_pixel // 8, conversion)


def _read_sysfs(folder: Path, key: str, device: str) -> str:
    """Read one sysfs attribute of a framebuffer."""
    path = folder / key
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise DisplayError(
            f"cannot read the geometry of framebuffer {device} from {path}: {reason}"
        ) from None


def _read_geometry(folder: Path, device: str) -> _Geometry:
    """Read the size, depth and stride of a framebuffer from sysfs."""
    size = _read_sysfs(folder, "virtual_size", device)
    depth = _read_sysfs(folder, "bits_per_pixel", device)
    stride = _read_sysfs(folder, "stride", device)

    try:
        width, height = (int(part) for part in size.split(","))
        geometry = _Geometry(width, height, int(depth), int(stride))
    except ValueError:
        geometry = None
    if geometry is None or min(geometry.width, geometry.height, geometry.stride) < 1:
        raise DisplayError(
            f"framebuffer {device} reports a geometry that makes no sense: "
            f"virtual_size {size!r}, bits_per_pixel {depth!r}, stride {stride!r}"
        )
    return geometry


def _visible_area(
    geometry: _Geometry, info: ScreenInfo | None
) -> tuple[int, int, int, int]:
    """Return (x, y, width, height) of the visible part of the memory."""
    whole = (0, 0, geometry.width, geometry.height)
    if info is None or info.width < 1 or info.height < 1:
        return whole
    fits = (info.x_offset + info.width <= geometry.width
            and info.y_offset + info.height <= geometry.height)
    if not fits:
        log.warning("the driver's visible area %dx%d+%d+%d lies outside the "
                    "framebuffer; drawing on all of it", info.width, info.height,
                    info.x_offset, info.y_offset)
        return whole
    return (info.x_offset, info.y_offset, info.width, info.height)


def _usable_info(info: ScreenInfo | None, bits_per_pixel: int) -> ScreenInfo | None:
    """Drop the driver's screen info when it disagrees with sysfs on depth."""
    if info is None or info.bits_per_pixel == bits_per_pixel:
        return info
    log.warning("the driver reports %d bits per pixel but sysfs %d; trusting sysfs",
                info.bits_per_pixel, bits_per_pixel)
    return None


def _screen_view(
    memory: mmap.mmap,
    geometry: _Geometry,
    area: tuple[int, int, int, int],
    bytes_per_pixel: int,
) -> np.ndarray:
    """View the visible area of the mapped memory as rows of pixel bytes."""
    x, y, width, height = area
    return np.ndarray(
        (height, width, bytes_per_pixel), dtype=np.uint8, buffer=memory,
        offset=y * geometry.stride + x * bytes_per_pixel,
        strides=(geometry.stride, bytes_per_pixel, 1),
    )


def _permission_message(device: str) -> str:
    """Say which group a user needs to write to the framebuffer."""
    try:
        group = grp.getgrgid(os.stat(device).st_gid).gr_name
    except (OSError, KeyError):
        group = "video"
    return (
        f"no permission to write to framebuffer {device}: run pi-classifier as "
        f"a user in its group {group!r} (the 'video' group on Raspberry Pi OS, "
        "e.g. sudo usermod -aG video $USER, then log in again)"
    )


def _unmap(memory: mmap.mmap) -> None:
    """Unmap the framebuffer, logging when a view still holds it."""
    try:
        memory.close()
    except BufferError:
        log.warning("the framebuffer stays mapped: a view of it is still in use")


def _into(result: np.ndarray, target: np.ndarray) -> None:
    """Copy an OpenCV result into the target unless it was written in place."""
    if result is not target:
        np.copyto(target, result)


def _check_frame(image: np.ndarray) -> None:
    """Reject anything but a BGR uint8 picture."""
    ok = (isinstance(image, np.ndarray) and image.dtype == np.uint8
          and image.ndim == 3 and image.shape[2] == 3 and image.size > 0)
    if not ok:
        shape = getattr(image, "shape", None)
        kind = getattr(image, "dtype", type(image).__name__)
        raise DisplayError(
            f"the framebuffer display takes BGR uint8 frames (height x width x 3), "
            f"not {kind} of shape {shape}"
        )


def _fit(
    source: tuple[int, int], screen: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Scale (height, width) into the screen keeping its aspect: (x, y, w, h)."""
    height, width = source
    screen_height, screen_width = screen
    scale = min(screen_width / width, screen_height / height)
    fitted_width = min(screen_width, max(1, round(width * scale)))
    fitted_height = min(screen_height, max(1, round(height * scale)))
    x = (screen_width - fitted_width) // 2
    y = (screen_height - fitted_height) // 2
    return x, y, fitted_width, fitted_height


class FramebufferDisplay(Display):
    """Frames scaled, letterboxed and written into a memory-mapped /dev/fbN.

    The geometry comes from ``/sys/class/graphics/fbN`` (``virtual_size``,
    ``bits_per_pixel``, ``stride``); the channel layout and visible area from
    the FBIOGET_VSCREENINFO ioctl when the driver answers it, else the usual
    little-endian layouts are assumed (see ``choose_pixel_format``). Buffers are
    allocated once per input frame size and the black bars are drawn only
    when that size changes.

    Known limitations: frames are written into the memory being scanned
    out, without page flipping, so fast motion may tear; and the visible area
    is read once at ``open()``, so a later pan of the framebuffer by another
    program is not followed. Call ``show`` and ``close`` from one thread.

    Args:
        display: The display section of the configuration (``device``,
            ``hide_cursor``).
        sysfs_root: The folder holding ``fbN`` sysfs folders; tests point it
            at a fake one.
        console: The console guard used when ``hide_cursor`` is set; the
            default switches ``/dev/tty0`` to graphics mode.

    """

    name = "framebuffer"

    def __init__(
        self,
        display: DisplayConfig,
        *,
        sysfs_root: Path | None = None,
        console: ConsoleGuard | None = None,
    ) -> None:
        self._device = display.device
        self._sysfs_root = Path(sysfs_root) if sysfs_root is not None else SYSFS_ROOT
        self._console = None
        if display.hide_cursor:
            self._console = console if console is not None else ConsoleGuard()
        self._resources: contextlib.ExitStack | None = None
        self._screen: np.ndarray | None = None
        self._format: PixelFormat | None = None
        self._black: np.ndarray | None = None
        self._placement: _Placement | None = None

    @property
    def size(self) -> tuple[int, int] | None:
        """The visible size as (width, height) while open, else None."""
        if self._screen is None:
            return None
        return self._screen.shape[1], self._screen.shape[0]

    @property
    def pixel_format(self) -> PixelFormat | None:
        """The pixel layout written while open, else None."""
        return self._format

    def open(self) -> None:
        """Map the framebuffer and hide the console; does nothing when open.

        Raises:
            DisplayError: The device is missing, not writable, of an
                unsupported depth or layout, or its sysfs geometry is missing.

        """
        if self._resources is not None:
            return
        with contextlib.ExitStack() as stack:
            self._map(stack)
            if self._console is not None:
                self._console.hide()
                stack.callback(self._console.restore)
            self._resources = stack.pop_all()

    def show(self, image: np.ndarray) -> None:
        """Scale a BGR frame to fit, letterbox it and write it to the screen.

        Args:
            image: The frame, BGR uint8, height x width x 3.

        Raises:
            DisplayError: The display is not open or the frame is not BGR uint8.

        """
        if self._screen is None:
            raise DisplayError(f"framebuffer {self._device} is not open")
        _check_frame(image)
        placement = self._placement_for(image.shape[:2])
        self._draw(image, placement)

    def close(self) -> None:
        """Restore the console, unmap and close the device; safe twice."""
        resources, self._resources = self._resources, None
        if resources is not None:
            resources.close()

    def _map(self, stack: contextlib.ExitStack) -> None:
        """Open and map the device, registering each release on the stack."""
        folder = self._sysfs_root / self._framebuffer_name()
        geometry = _read_geometry(folder, self._device)

        fd = self._open_device()
        stack.callback(os.close, fd)
        info = _usable_info(_query_screen_info(fd), geometry.bits_per_pixel)
        pixels = choose_pixel_format(geometry.bits_per_pixel, info, self._device)
        self._check_stride(geometry, pixels)

        memory = self._mmap(fd, geometry.stride * geometry.height)
        stack.callback(_unmap, memory)
        stack.callback(self._forget_views)
        area = _visible_area(geometry, info)
        self._screen = _screen_view(memory, geometry, area, pixels.bytes_per_pixel)
        self._format = pixels
        self._black = self._convert_pixel(np.zeros((1, 1, 3), np.uint8))
        log.info("framebuffer %s: %dx%d, %s, stride %d bytes", self._device,
                 area[2], area[3], pixels.name, geometry.stride)

    def _framebuffer_name(self) -> str:
        """Check the device exists and return its name, such as ``fb0``."""
        path = Path(self._device)
        if not path.exists():
            raise DisplayError(f"framebuffer {self._device} does not exist")
        for name in (path.name, path.resolve().name):
            if re.fullmatch(r"fb\d+", name):
                return name
        raise DisplayError(
            f"cannot tell which framebuffer {self._device} is; give its /dev/fbN path"
        )

    def _open_device(self) -> int:
        """Open the device for writing, explaining a permission failure."""
        try:
            return os.open(self._device, os.O_RDWR | os.O_CLOEXEC)
        except PermissionError:
            raise DisplayError(_permission_message(self._device)) from None
        except OSError as error:
            raise DisplayError(
                f"cannot open framebuffer {self._device}: {error.strerror or error}"
            ) from None

    def _check_stride(self, geometry: _Geometry, pixels: PixelFormat) -> None:
        """Reject a stride too short to hold a row of pixels."""
        if geometry.stride < geometry.width * pixels.bytes_per_pixel:
            raise DisplayError(
                f"framebuffer {self._device} reports a stride of {geometry.stride} "
                f"bytes, too short for {geometry.width} pixels of "
                f"{pixels.bytes_per_pixel} bytes"
            )

    def _mmap(self, fd: int, length: int) -> mmap.mmap:
        """Map the framebuffer memory shared and writable."""
        try:
            return mmap.mmap(fd, length, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise DisplayError(
                f"cannot map {length} bytes of framebuffer {self._device}: {reason}"
            ) from None

    def _forget_views(self) -> None:
        """Drop every array that points into the mapped memory."""
        self._screen = None
        self._placement = None
        self._format = None
        self._black = None

    def _convert_pixel(self, image: np.ndarray) -> np.ndarray:
        """Convert a BGR picture to the framebuffer's pixel layout."""
        if self._format is None or self._format.conversion is None:
            return image.copy()
        return cv2.cvtColor(image, self._format.conversion)

    def _placement_for(self, source: tuple[int, int]) -> _Placement:
        """Return where frames of this size go, clearing the screen on change."""
        if self._placement is not None and self._placement.source == source:
            return self._placement
        screen = self._screen
        x, y, width, height = _fit(source, screen.shape[:2])
        screen[...] = self._black
        resize = (width, height) != (source[1], source[0])
        scaled = None
        if resize and self._format.conversion is not None:
            scaled = np.empty((height, width, 3), np.uint8)
        shrink = width < source[1]
        self._placement = _Placement(
            source=source,
            target=screen[y:y + height, x:x + width],
            scaled=scaled,
            resize=resize,
            interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
        )
        log.debug("frames of %dx%d shown at %dx%d+%d+%d", source[1], source[0],
                  width, height, x, y)
        return self._placement

    def _draw(self, image: np.ndarray, placement: _Placement) -> None:
        """Scale and convert one frame into its place on the screen."""
        target = placement.target
        size = (target.shape[1], target.shape[0])
        if not placement.resize:
            self._convert_into(image, target)
        elif placement.scaled is None:
            _into(cv2.resize(image, size, dst=target,
                             interpolation=placement.interpolation), target)
        else:
            _into(cv2.resize(image, size, dst=placement.scaled,
                             interpolation=placement.interpolation), placement.scaled)
            self._convert_into(placement.scaled, target)

    def _convert_into(self, image: np.ndarray, target: np.ndarray) -> None:
        """Convert a BGR picture of the target's size into the target."""
        if self._format.conversion is None:
            np.copyto(target, image)
        else:
            _into(cv2.cvtColor(image, self._format.conversion, dst=target), target)
