"""The display factory's choices, the null display and the window display."""

from __future__ import annotations

import logging
import sys
import types
from typing import ClassVar

import cv2
import numpy as np
import pytest
from test_framebuffer import FILL, HEIGHT, WIDTH, halves, make_framebuffer

from pi_classifier.config import DisplayConfig
from pi_classifier.displays import create_display, framebuffer, window
from pi_classifier.displays.base import Display
from pi_classifier.displays.framebuffer import FramebufferDisplay
from pi_classifier.displays.null import NullDisplay
from pi_classifier.displays.window import WindowDisplay, gui_backends
from pi_classifier.errors import DisplayError
from pi_classifier.frames import Frame
from pi_classifier.sources.base import FrameSource


class StillSource(FrameSource):
    """A source that is never read; the factory only looks at its type."""

    name = "still"

    def open(self) -> None:
        pass

    def read(self, timeout: float) -> Frame:
        return Frame(np.zeros((4, 4, 3), np.uint8), 0, 0.0)

    def close(self) -> None:
        pass


class FakeDrmDisplay(Display):
    """Stands in for the DRM display another module provides."""

    name = "drm"
    composites_overlay = True
    supported_answer = True
    fail_with: str | None = None
    instances: ClassVar[list[FakeDrmDisplay]] = []
    asked: ClassVar[list[object]] = []

    def __init__(self, display: DisplayConfig, source: FrameSource) -> None:
        self.source = source
        self.opened = False
        self.closed = False
        FakeDrmDisplay.instances.append(self)

    @staticmethod
    def supported(source: FrameSource) -> bool:
        FakeDrmDisplay.asked.append(source)
        return FakeDrmDisplay.supported_answer

    @property
    def size(self) -> tuple[int, int] | None:
        return (WIDTH, HEIGHT)

    def open(self) -> None:
        if FakeDrmDisplay.fail_with:
            raise DisplayError(FakeDrmDisplay.fail_with)
        self.opened = True

    def close(self) -> None:
        self.closed = True


class FakePicamera2Source(StillSource):
    name = "picamera2"


@pytest.fixture
def drm(monkeypatch):
    """Install fake DRM display and Picamera2 source modules."""
    FakeDrmDisplay.supported_answer = True
    FakeDrmDisplay.fail_with = None
    FakeDrmDisplay.instances = []
    FakeDrmDisplay.asked = []
    drm_module = types.ModuleType("pi_classifier.displays.drm")
    drm_module.DrmDisplay = FakeDrmDisplay
    camera_module = types.ModuleType("pi_classifier.sources.picamera2")
    camera_module.Picamera2Source = FakePicamera2Source
    monkeypatch.setitem(sys.modules, "pi_classifier.displays.drm", drm_module)
    monkeypatch.setitem(sys.modules, "pi_classifier.sources.picamera2", camera_module)
    return FakeDrmDisplay


@pytest.fixture
def no_window(monkeypatch):
    monkeypatch.setattr(window, "window_supported", lambda: False)


@pytest.fixture
def fake_fb(tmp_path, monkeypatch):
    """A framebuffer stand-in where the factory looks for one."""
    fake = make_framebuffer(tmp_path, 32)
    monkeypatch.setattr(framebuffer, "SYSFS_ROOT", fake.sysfs)
    return fake


def config(**values) -> DisplayConfig:
    values.setdefault("hide_cursor", False)
    return DisplayConfig(**values)


def test_null_display_counts_frames_and_has_no_size():
    display = create_display(config(output="null"), StillSource())

    assert isinstance(display, NullDisplay)
    assert display.size is None
    display.show(halves(8, 8))
    display.show(halves(8, 8))
    display.close()
    display.close()
    assert display.frames_shown == 2
    with pytest.raises(DisplayError, match="not open"):
        display.show(halves(8, 8))


def test_framebuffer_output_is_opened_and_draws(fake_fb):
    display = create_display(
        config(output="framebuffer", device=str(fake_fb.device)), StillSource()
    )
    try:
        assert isinstance(display, FramebufferDisplay)
        assert display.size == (WIDTH, HEIGHT)
        display.show(halves(WIDTH, HEIGHT))
        assert tuple(fake_fb.pixels()[0, 0]) == (0, 0, 255, 255)
    finally:
        display.close()


def test_framebuffer_output_reports_a_missing_device(tmp_path):
    with pytest.raises(DisplayError, match="does not exist"):
        create_display(config(output="framebuffer", device=str(tmp_path / "fb9")),
                       StillSource())


def test_auto_uses_the_framebuffer_when_it_is_there(fake_fb, no_window):
    display = create_display(config(device=str(fake_fb.device)), StillSource())

    assert isinstance(display, FramebufferDisplay)
    display.close()


def test_auto_without_any_screen_falls_back_to_null(tmp_path, no_window, caplog):
    with caplog.at_level(logging.WARNING):
        display = create_display(config(device=str(tmp_path / "fb0")), StillSource())

    assert isinstance(display, NullDisplay)
    assert "frames will not be shown" in caplog.text


def test_auto_moves_on_when_the_framebuffer_fails_to_open(fake_fb, no_window, caplog):
    (fake_fb.sysfs / "fb0" / "bits_per_pixel").write_text("8\n")

    with caplog.at_level(logging.WARNING):
        display = create_display(config(device=str(fake_fb.device)), StillSource())

    assert isinstance(display, NullDisplay)
    assert "not using the framebuffer display" in caplog.text
    assert "8 bits per pixel" in caplog.text


def test_auto_tries_the_window_after_the_framebuffer(tmp_path, monkeypatch):
    tried = []
    monkeypatch.setattr(window, "window_supported", lambda: True)
    monkeypatch.setattr(WindowDisplay, "open", lambda self: tried.append(self))

    display = create_display(config(device=str(tmp_path / "fb0")), StillSource())

    assert isinstance(display, WindowDisplay)
    assert tried == [display]


def test_auto_uses_drm_for_a_picamera2_source(drm, fake_fb, no_window):
    source = FakePicamera2Source()

    display = create_display(config(device=str(fake_fb.device)), source)

    assert isinstance(display, FakeDrmDisplay)
    assert display.opened
    assert display.source is source
    assert drm.asked == [source]


def test_auto_skips_drm_when_it_is_not_supported(drm, fake_fb, no_window):
    drm.supported_answer = False

    display = create_display(config(device=str(fake_fb.device)),
                             FakePicamera2Source())

    assert isinstance(display, FramebufferDisplay)
    assert drm.instances == []
    display.close()


def test_auto_does_not_ask_drm_about_other_sources(drm, fake_fb, no_window):
    display = create_display(config(device=str(fake_fb.device)), StillSource())

    assert isinstance(display, FramebufferDisplay)
    assert drm.asked == []
    display.close()


def test_drm_failure_falls_back_to_the_framebuffer(drm, fake_fb, caplog):
    drm.fail_with = "no DRM device"

    with caplog.at_level(logging.WARNING):
        display = create_display(config(output="drm", device=str(fake_fb.device)),
                                 FakePicamera2Source())

    assert isinstance(display, FramebufferDisplay)
    assert drm.instances[0].closed
    assert "no DRM device" in caplog.text
    display.show(halves(WIDTH, HEIGHT))
    assert tuple(fake_fb.pixels()[0, -1]) == (255, 0, 0, 255)
    display.close()


def test_drm_failure_without_fallback_is_an_error(drm, fake_fb):
    drm.fail_with = "no DRM device"

    with pytest.raises(DisplayError, match="no DRM device"):
        create_display(config(output="drm", fallback="none",
                              device=str(fake_fb.device)), FakePicamera2Source())
    assert tuple(fake_fb.pixels()[0, 0]) == (FILL,) * 4


def test_drm_that_cannot_be_imported_falls_back(monkeypatch, fake_fb, caplog):
    monkeypatch.setitem(sys.modules, "pi_classifier.displays.drm", None)

    with caplog.at_level(logging.WARNING):
        display = create_display(config(output="drm", device=str(fake_fb.device)),
                                 StillSource())

    assert isinstance(display, FramebufferDisplay)
    assert "cannot be loaded" in caplog.text
    display.close()


def test_drm_output_needs_a_picamera2_source(drm, fake_fb):
    with pytest.raises(DisplayError, match="only the Picamera2 camera"):
        create_display(config(output="drm", fallback="none",
                              device=str(fake_fb.device)), StillSource())
    assert drm.instances == []

    display = create_display(config(output="drm", device=str(fake_fb.device)),
                             StillSource())
    assert isinstance(display, FramebufferDisplay)
    display.close()


def test_drm_output_returns_the_opened_drm_display(drm):
    source = FakePicamera2Source()

    display = create_display(config(output="drm"), source)

    assert isinstance(display, FakeDrmDisplay)
    assert display.opened


HEADLESS_5 = """
  GUI:                           NONE
    VTK support:                 NO
    Built-in fonts:              sans

  Media I/O:
"""
QT_4_8 = """
  GUI:                           QT5
    QT:                          YES (ver 5.15.0 )
      QT OpenGL support:         NO
    GThread :                    NO
    VTK support:                 NO

  Media I/O:
"""
GTK_4_6 = """
  GUI:
    GTK+:                        YES (ver 3.24.37)
      GThread :                  YES (ver 2.74.6)
      GtkGlExt:                  NO
    VTK support:                 NO

  Media I/O:
"""
HEADLESS_4_5 = """
  GUI:
    VTK support:                 NO

  Media I/O:
    ZLib:                        /lib/libz.so (ver 1.2.13)
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [(HEADLESS_5, []), (QT_4_8, ["QT5", "QT"]), (GTK_4_6, ["GTK+"]),
     (HEADLESS_4_5, []), ("", [])],
    ids=["headless-5", "qt-4.8", "gtk-4.6", "headless-4.5", "empty"],
)
def test_gui_backends_are_read_from_build_information(text, expected):
    assert gui_backends(text) == expected


def test_window_needs_a_desktop_session(monkeypatch):
    monkeypatch.setattr(window.cv2, "getBuildInformation", lambda: GTK_4_6)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert not window.window_supported()

    monkeypatch.setenv("DISPLAY", ":0")
    assert window.window_supported()


def test_window_display_refuses_to_open_without_window_support(no_window):
    with pytest.raises(DisplayError, match="cannot open a window"):
        WindowDisplay().open()


class FakeHighGui:
    """Records the OpenCV window calls WindowDisplay makes."""

    def __init__(self, key: int = -1, visible: float = 1.0) -> None:
        self.key = key
        self.visible = visible
        self.calls: list[tuple] = []

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(window, "window_supported", lambda: True)
        for name in ("namedWindow", "imshow", "waitKey", "getWindowProperty",
                     "destroyWindow"):
            monkeypatch.setattr(window.cv2, name, getattr(self, name))

    def namedWindow(self, title, flags):  # noqa: N802
        self.calls.append(("namedWindow", title))

    def imshow(self, title, image):
        self.calls.append(("imshow", title, image))

    def waitKey(self, delay):  # noqa: N802
        return self.key

    def getWindowProperty(self, title, prop):  # noqa: N802
        return self.visible

    def destroyWindow(self, title):  # noqa: N802
        self.calls.append(("destroyWindow", title))


def test_window_display_shows_frames_in_its_window(monkeypatch):
    gui = FakeHighGui()
    gui.install(monkeypatch)
    frame = halves(8, 8)

    with WindowDisplay(title="test") as display:
        display.show(frame)
        assert not display.closed_by_user

    assert [call[0] for call in gui.calls] == ["namedWindow", "imshow",
                                               "destroyWindow"]
    assert gui.calls[1][2] is frame


@pytest.mark.parametrize(("key", "visible"), [(ord("q"), 1.0), (27, 1.0),
                                              (-1, 0.0)],
                         ids=["q", "escape", "closed"])
def test_window_display_notices_the_user_leaving(monkeypatch, key, visible):
    FakeHighGui(key=key, visible=visible).install(monkeypatch)

    with WindowDisplay() as display:
        display.show(halves(8, 8))
        assert display.closed_by_user


def test_window_display_turns_opencv_errors_into_display_errors(monkeypatch):
    gui = FakeHighGui()
    gui.install(monkeypatch)

    def refuse(title, image):
        raise cv2.error("bad frame")

    monkeypatch.setattr(window.cv2, "imshow", refuse)
    with WindowDisplay() as display, pytest.raises(DisplayError):
        display.show(halves(8, 8))


def test_headless_opencv_refusing_a_window_is_a_display_error(monkeypatch):
    if gui_backends(cv2.getBuildInformation()):
        pytest.skip("this OpenCV can open windows; the refusal cannot happen")
    monkeypatch.setattr(window, "window_supported", lambda: True)

    with pytest.raises(DisplayError, match="cannot open a window"):
        WindowDisplay().open()
