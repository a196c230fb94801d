"""The framebuffer display against a file standing in for /dev/fb0."""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pi_classifier.config import DisplayConfig
from pi_classifier.displays import framebuffer
from pi_classifier.displays.console import (
    KD_GRAPHICS,
    KD_TEXT,
    KDGETMODE,
    KDSETMODE,
    ConsoleGuard,
)
from pi_classifier.displays.framebuffer import (
    FramebufferDisplay,
    ScreenInfo,
    parse_screen_info,
)
from pi_classifier.errors import DisplayError

WIDTH, HEIGHT = 40, 30
PADDING = 8
FILL = 0x5A

RED_BGR = (0, 0, 255)
BLUE_BGR = (255, 0, 0)

# The bytes each colour must become in memory, written out by hand from the
# formats: RGB565 little-endian (red 0xF800, blue 0x001F), 24-bit B,G,R and
# 32-bit B,G,R,X with X opaque.
EXPECTED = {
    16: {"red": (0x00, 0xF8), "blue": (0x1F, 0x00), "black": (0x00, 0x00)},
    24: {"red": (0, 0, 255), "blue": (255, 0, 0), "black": (0, 0, 0)},
    32: {"red": (0, 0, 255, 255), "blue": (255, 0, 0, 255), "black": (0, 0, 0, 255)},
}


@dataclass
class FakeFramebuffer:
    device: Path
    sysfs: Path
    width: int
    height: int
    bits: int
    stride: int

    @property
    def bytes_per_pixel(self) -> int:
        return self.bits // 8

    def rows(self) -> np.ndarray:
        data = np.frombuffer(self.device.read_bytes(), np.uint8)
        return data.reshape(self.height, self.stride)

    def pixels(self) -> np.ndarray:
        row_bytes = self.width * self.bytes_per_pixel
        return self.rows()[:, :row_bytes].reshape(
            self.height, self.width, self.bytes_per_pixel
        )

    def padding(self) -> np.ndarray:
        return self.rows()[:, self.width * self.bytes_per_pixel:]

    def config(self, **changes) -> DisplayConfig:
        values = {"output": "framebuffer", "device": str(self.device),
                  "hide_cursor": False}
        values.update(changes)
        return DisplayConfig(**values)

    def display(self, **changes) -> FramebufferDisplay:
        return FramebufferDisplay(self.config(**changes), sysfs_root=self.sysfs)


def make_framebuffer(
    folder: Path,
    bits: int,
    width: int = WIDTH,
    height: int = HEIGHT,
    padding: int = PADDING,
) -> FakeFramebuffer:
    stride = width * max(bits // 8, 1) + padding
    sysfs = folder / "sysfs"
    (sysfs / "fb0").mkdir(parents=True)
    (sysfs / "fb0" / "virtual_size").write_text(f"{width},{height}\n")
    (sysfs / "fb0" / "bits_per_pixel").write_text(f"{bits}\n")
    (sysfs / "fb0" / "stride").write_text(f"{stride}\n")
    (folder / "dev").mkdir()
    device = folder / "dev" / "fb0"
    device.write_bytes(bytes([FILL]) * (stride * height))
    return FakeFramebuffer(device, sysfs, width, height, bits, stride)


def halves(width: int, height: int) -> np.ndarray:
    """A BGR frame: left half pure red, right half pure blue."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = RED_BGR
    image[:, width // 2:] = BLUE_BGR
    return image


def assert_colour(block: np.ndarray, colour: tuple[int, ...]) -> None:
    assert block.size > 0
    expected = np.broadcast_to(np.array(colour, np.uint8), block.shape)
    np.testing.assert_array_equal(block, expected)


@pytest.fixture(params=[16, 24, 32], ids=["rgb565", "bgr888", "xrgb8888"])
def fb(request, tmp_path) -> FakeFramebuffer:
    return make_framebuffer(tmp_path, request.param)


def test_frame_of_screen_size_is_written_exactly(fb):
    colours = EXPECTED[fb.bits]
    with fb.display() as display:
        assert display.size == (WIDTH, HEIGHT)
        display.show(halves(WIDTH, HEIGHT))
        pixels = fb.pixels()

    assert_colour(pixels[:, :20], colours["red"])
    assert_colour(pixels[:, 20:], colours["blue"])
    assert_colour(fb.padding(), (FILL,))


def test_wide_frame_is_shrunk_and_letterboxed_top_and_bottom(fb):
    colours = EXPECTED[fb.bits]
    with fb.display() as display:
        display.show(halves(WIDTH, HEIGHT))
        display.show(halves(80, 20))
        pixels = fb.pixels()

    # 80x20 at half size is 40x10, centred: rows 10-19, bars above and below.
    assert_colour(pixels[:10], colours["black"])
    assert_colour(pixels[20:], colours["black"])
    assert_colour(pixels[10:20, :20], colours["red"])
    assert_colour(pixels[10:20, 20:], colours["blue"])
    assert_colour(fb.padding(), (FILL,))


def test_square_frame_is_enlarged_and_pillarboxed_left_and_right(fb):
    colours = EXPECTED[fb.bits]
    with fb.display() as display:
        display.show(halves(20, 20))
        pixels = fb.pixels()

    # 20x20 at 1.5x is 30x30, centred: columns 5-34. Columns next to the
    # red/blue seam are blended by the linear scaling and are not checked.
    assert_colour(pixels[:, :5], colours["black"])
    assert_colour(pixels[:, 35:], colours["black"])
    assert_colour(pixels[:, 5:17], colours["red"])
    assert_colour(pixels[:, 23:35], colours["blue"])
    assert_colour(fb.padding(), (FILL,))


def test_bars_are_cleared_when_the_frame_size_changes_only(fb):
    marker = bytes([0x77]) * fb.bytes_per_pixel
    with fb.display() as display:
        display.show(halves(80, 20))
        with fb.device.open("r+b") as stand_in:
            stand_in.write(marker)
        display.show(halves(80, 20))
        kept = fb.pixels()[0, 0].tobytes()
        display.show(halves(20, 20))
        cleared = fb.pixels()[0, 0]

    assert kept == marker
    assert_colour(cleared, EXPECTED[fb.bits]["black"])


@pytest.mark.parametrize(
    ("bits", "red_offset", "green_length", "blue_offset", "red_bytes"),
    [
        (16, 0, 6, 11, (0x1F, 0x00)),
        (16, 10, 5, 0, (0x00, 0x7C)),
        (24, 0, 8, 16, (255, 0, 0)),
        (32, 0, 8, 16, (255, 0, 0, 255)),
    ],
    ids=["bgr565", "rgb555", "rgb888", "xbgr8888"],
)
def test_layout_reported_by_the_driver_is_honoured(
    tmp_path, monkeypatch, bits, red_offset, green_length, blue_offset, red_bytes
):
    fake = make_framebuffer(tmp_path, bits)
    info = ScreenInfo(WIDTH, HEIGHT, 0, 0, bits, red_offset, green_length,
                      blue_offset)
    monkeypatch.setattr(framebuffer, "_query_screen_info", lambda fd: info)
    red = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    red[:] = RED_BGR

    with fake.display() as display:
        display.show(red)
        pixels = fake.pixels()

    assert_colour(pixels, red_bytes)


def test_only_the_visible_part_of_a_taller_virtual_screen_is_drawn(
    tmp_path, monkeypatch
):
    fake = make_framebuffer(tmp_path, 32, height=2 * HEIGHT)
    info = ScreenInfo(WIDTH, HEIGHT, 0, HEIGHT, 32, 16, 8, 0)
    monkeypatch.setattr(framebuffer, "_query_screen_info", lambda fd: info)

    with fake.display() as display:
        assert display.size == (WIDTH, HEIGHT)
        display.show(halves(WIDTH, HEIGHT))
        pixels = fake.pixels()

    assert_colour(pixels[:HEIGHT], (FILL,))
    assert_colour(pixels[HEIGHT:, :20], EXPECTED[32]["red"])
    assert_colour(pixels[HEIGHT:, 20:], EXPECTED[32]["blue"])


def test_screen_info_fields_are_read_from_their_kernel_offsets():
    fields = list(range(100, 140))
    fields[0:8] = [1920, 1080, 1920, 2160, 0, 1080, 32, 0]
    fields[8:17] = [16, 8, 0, 8, 8, 0, 0, 8, 0]
    info = parse_screen_info(struct.pack("=40I", *fields))

    assert info == ScreenInfo(1920, 1080, 0, 1080, 32, 16, 8, 0)


def test_a_regular_file_gives_no_screen_info(tmp_path):
    stand_in = tmp_path / "fb0"
    stand_in.write_bytes(b"\0" * 64)
    fd = os.open(stand_in, os.O_RDWR)
    try:
        assert framebuffer._query_screen_info(fd) is None
    finally:
        os.close(fd)


def test_missing_device_is_reported(tmp_path):
    config = DisplayConfig(device=str(tmp_path / "fb9"), hide_cursor=False)

    with pytest.raises(DisplayError, match=r"framebuffer .*/fb9 does not exist"):
        FramebufferDisplay(config, sysfs_root=tmp_path).open()


def test_missing_sysfs_geometry_is_reported(tmp_path):
    fake = make_framebuffer(tmp_path, 32)
    shutil.rmtree(fake.sysfs)

    with pytest.raises(DisplayError, match="cannot read the geometry"):
        fake.display().open()


def test_nonsense_sysfs_geometry_is_reported(tmp_path):
    fake = make_framebuffer(tmp_path, 32)
    (fake.sysfs / "fb0" / "virtual_size").write_text("wide\n")

    with pytest.raises(DisplayError, match="geometry that makes no sense"):
        fake.display().open()


def test_unsupported_depth_is_reported(tmp_path):
    fake = make_framebuffer(tmp_path, 8)

    with pytest.raises(DisplayError, match="8 bits per pixel"):
        fake.display().open()


def test_stride_shorter_than_a_row_is_reported(tmp_path):
    fake = make_framebuffer(tmp_path, 32)
    (fake.sysfs / "fb0" / "stride").write_text(f"{WIDTH * 2}\n")

    with pytest.raises(DisplayError, match="stride"):
        fake.display().open()


def test_device_that_is_a_directory_cannot_be_opened(tmp_path):
    fake = make_framebuffer(tmp_path, 32)
    fake.device.unlink()
    fake.device.mkdir()

    with pytest.raises(DisplayError, match="cannot open framebuffer"):
        fake.display().open()


NOBODY = 65534


def open_as_nobody(display: FramebufferDisplay) -> str:
    """Open the display in a forked child that has dropped to uid 65534."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 4
        try:
            os.close(reader)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                display.open()
                code = 0
            except DisplayError as error:
                os.write(writer, str(error).encode())
                code = 3
        finally:
            os._exit(code)
    os.close(writer)
    try:
        message = read_to_end(reader, timeout=30.0).decode()
    finally:
        os.close(reader)
        status = reap(pid, timeout=30.0)
    assert status == 3, message
    return message


def read_to_end(fd: int, timeout: float) -> bytes:
    """Read a pipe until its writer closes, giving up after ``timeout``."""
    deadline = time.monotonic() + timeout
    data = b""
    while select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
        chunk = os.read(fd, 1024)
        if not chunk:
            break
        data += chunk
    return data


def reap(pid: int, timeout: float) -> int:
    """Wait for a child's exit code, killing it if it outlives ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.fixture
def shared_folder():
    """A folder under /tmp that an unprivileged user can walk into."""
    folder = Path(tempfile.mkdtemp(prefix="fb-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def test_read_only_device_names_the_group_needed(shared_folder):
    # Root may write any file, so as root the open is tried in a forked child
    # that has dropped to the unprivileged uid 65534 (the interpreter may sit
    # where that user cannot start it, hence fork rather than a new process);
    # otherwise the test runs in this process. Either way the kernel refuses.
    fake = make_framebuffer(shared_folder, 32)
    for path in (shared_folder / "sysfs", shared_folder / "sysfs" / "fb0",
                 shared_folder / "dev"):
        path.chmod(0o755)
    fake.device.chmod(0o444)

    if os.geteuid() == 0:
        message = open_as_nobody(fake.display())
    else:
        with pytest.raises(DisplayError) as caught:
            fake.display().open()
        message = str(caught.value)

    assert "no permission to write to framebuffer" in message
    assert str(fake.device) in message
    assert "video" in message


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_failed_mapping_releases_the_device(tmp_path):
    fake = make_framebuffer(tmp_path, 32)
    fake.device.write_bytes(b"\0" * 16)
    before = open_fds()

    with pytest.raises(DisplayError, match="cannot map"):
        fake.display().open()

    assert open_fds() == before


def test_close_releases_everything_and_is_safe_twice(tmp_path):
    fake = make_framebuffer(tmp_path, 16)
    before = open_fds()
    display = fake.display()
    display.open()
    display.open()
    assert open_fds() != before

    display.close()
    display.close()

    assert open_fds() == before
    assert display.size is None
    with pytest.raises(DisplayError, match="not open"):
        display.show(halves(WIDTH, HEIGHT))


def test_frames_that_are_not_bgr_uint8_are_refused(tmp_path):
    fake = make_framebuffer(tmp_path, 24)
    with fake.display() as display:
        with pytest.raises(DisplayError, match="BGR uint8"):
            display.show(np.zeros((HEIGHT, WIDTH), np.uint8))
        with pytest.raises(DisplayError, match="BGR uint8"):
            display.show(np.zeros((HEIGHT, WIDTH, 3), np.float32))


class RecordingIoctl:
    """Stands in for fcntl.ioctl on a virtual terminal."""

    def __init__(self, mode: int = KD_TEXT) -> None:
        self.mode = mode
        self.calls: list[tuple[int, int]] = []

    def __call__(self, fd, request, arg=0):
        os.fstat(fd)  # the guard must pass a descriptor that is really open
        if request == KDGETMODE:
            arg[:] = struct.pack("i", self.mode)
            self.calls.append((request, self.mode))
        else:
            self.calls.append((request, arg))
        return 0


@pytest.fixture
def pty():
    leader, follower = os.openpty()
    yield leader, os.ttyname(follower)
    os.close(follower)
    os.close(leader)


def read_pending(fd: int) -> bytes:
    """Read what the terminal has written, waiting at most a second."""
    data = b""
    while select.select([fd], [], [], 0.1 if data else 1.0)[0]:
        data += os.read(fd, 1024)
    return data


def test_console_is_switched_to_graphics_and_back(pty, tmp_path):
    leader, tty = pty
    blink = tmp_path / "cursor_blink"
    blink.write_text("1\n")
    ioctl = RecordingIoctl()
    guard = ConsoleGuard(tty, blink_path=blink, ioctl=ioctl)

    with guard:
        assert guard.graphics_mode
        assert ioctl.calls == [(KDGETMODE, KD_TEXT), (KDSETMODE, KD_GRAPHICS)]
    guard.restore()

    assert ioctl.calls[2:] == [(KDSETMODE, KD_TEXT)]
    assert blink.read_text() == "1\n"
    assert read_pending(leader) == b""


def test_console_returns_to_the_mode_it_was_in(pty, tmp_path):
    _, tty = pty
    ioctl = RecordingIoctl(mode=KD_GRAPHICS)

    with ConsoleGuard(tty, blink_path=tmp_path / "none", ioctl=ioctl):
        pass

    assert ioctl.calls[-1] == (KDSETMODE, KD_GRAPHICS)


def test_console_that_is_not_a_vt_gets_blink_off_and_escape_codes(pty, tmp_path):
    leader, tty = pty
    blink = tmp_path / "cursor_blink"
    blink.write_text("1\n")
    guard = ConsoleGuard(tty, blink_path=blink)

    with guard:
        assert not guard.graphics_mode
        assert blink.read_text() == "0"
        hidden = read_pending(leader)

    assert hidden == b"\x1b[?25l"
    assert read_pending(leader) == b"\x1b[?25h"
    assert blink.read_text() == "1"
    assert not guard.active


def test_console_guard_without_any_console_is_harmless(tmp_path, caplog):
    guard = ConsoleGuard(tmp_path / "no-tty", blink_path=tmp_path / "no" / "blink")

    with caplog.at_level(logging.WARNING), guard:
        assert not guard.active

    assert "cannot open console" in caplog.text
    assert "blink" in caplog.text


def test_framebuffer_hides_the_console_while_open(tmp_path, pty):
    _, tty = pty
    fake = make_framebuffer(tmp_path, 16)
    ioctl = RecordingIoctl()
    guard = ConsoleGuard(tty, blink_path=tmp_path / "none", ioctl=ioctl)
    display = FramebufferDisplay(fake.config(hide_cursor=True),
                                 sysfs_root=fake.sysfs, console=guard)

    display.open()
    switched = list(ioctl.calls)
    display.close()
    display.close()

    assert switched[-1] == (KDSETMODE, KD_GRAPHICS)
    assert ioctl.calls[len(switched):] == [(KDSETMODE, KD_TEXT)]


def test_framebuffer_leaves_the_console_alone_without_hide_cursor(tmp_path, pty):
    _, tty = pty
    fake = make_framebuffer(tmp_path, 16)
    ioctl = RecordingIoctl()
    guard = ConsoleGuard(tty, blink_path=tmp_path / "none", ioctl=ioctl)

    with FramebufferDisplay(fake.config(hide_cursor=False), sysfs_root=fake.sysfs,
                            console=guard):
        pass

    assert ioctl.calls == []
