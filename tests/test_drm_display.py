"""The DRM display, with Picamera2's DRM preview played by the fake Picamera2."""

from __future__ import annotations

import numpy as np
import pytest
from fakes.picamera2 import FakePicamera2, Preview

from pi_classifier.config import CameraConfig, DisplayConfig
from pi_classifier.displays import drm
from pi_classifier.displays.drm import DrmDisplay, screen_size
from pi_classifier.errors import DisplayError
from pi_classifier.frames import Frame
from pi_classifier.sources.base import FrameSource
from pi_classifier.sources.picamera2 import Picamera2Source


def fake_sysfs(root, connectors):
    """A /sys/class/drm with the given {name: (status, modes)} connectors."""
    for name, (status, modes) in connectors.items():
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "status").write_text(status + "\n")
        (folder / "modes").write_text("".join(mode + "\n" for mode in modes))
    return root


@pytest.fixture
def screen(monkeypatch, tmp_path):
    root = fake_sysfs(
        tmp_path / "drm",
        {
            "card1-HDMI-A-1": ("connected", ["1920x1080", "1280x720"]),
            "card1-HDMI-A-2": ("disconnected", []),
        },
    )
    monkeypatch.setattr(drm, "DRM_SYSFS", root)
    return root


def make_source(width=640, height=480):
    camera = CameraConfig(width=width, height=height, frame_timeout=0.2)
    return Picamera2Source(
        camera, (224, 224), picamera2_class=FakePicamera2, backoff=(0.001, 0.002)
    )


def overlay_picture(width, height):
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[20:60, 20:300] = (255, 255, 255, 200)
    rgba[:, -5:] = (10, 200, 90, 255)
    return rgba


def test_open_starts_a_full_screen_drm_preview(rig, screen):
    source = make_source()
    with DrmDisplay(DisplayConfig(output="drm"), source) as display:
        record = rig.records[-1]
        assert record.previews == [
            (Preview.DRM, {"x": 0, "y": 0, "width": 1920, "height": 1080})
        ]
        assert record.configured["main"]["format"] == "XRGB8888"
        assert record.configured["buffer_count"] >= 2
        # A 4:3 camera picture fills the height of a 16:9 screen.
        assert display.size == (1440, 1080)
        assert display.composites_overlay
    source.close()


def test_overlay_reaches_set_overlay_as_rgba(rig, screen):
    source = make_source()
    with source, DrmDisplay(DisplayConfig(), source) as display:
        width, height = display.size
        rgba = overlay_picture(width, height)
        display.show_overlay(rgba)
        shown = rig.records[-1].overlays[-1]
    assert shown.shape == (1080, 1440, 4)
    assert shown.dtype == np.uint8
    np.testing.assert_array_equal(shown, rgba)


def test_opening_checks_the_overlay_plane_without_drawing(rig, screen):
    source = make_source()
    with source, DrmDisplay(DisplayConfig(), source):
        assert rig.records[-1].overlays == [None]


def test_no_overlay_plane_is_a_display_error_and_releases_the_preview(rig, screen):
    rig.overlay_plane = False
    source = make_source()
    with source:
        display = DrmDisplay(DisplayConfig(), source)
        with pytest.raises(DisplayError, match="no overlay plane"):
            display.open()
        preview_camera = rig.records[-1]
        assert preview_camera.closed and preview_camera.preview_stops == 1
        frame = source.read(0.5)
        display.close()
    # The camera came back for the framebuffer fallback, frames to the CPU.
    assert isinstance(frame, Frame)
    assert frame.image.shape == (480, 640, 3)
    assert rig.records[-1].configured["main"]["format"] == "RGB888"
    assert rig.records[-1].previews[0][0] is Preview.NULL


def test_no_drm_device_is_a_display_error(rig, screen):
    rig.drm_device = False
    source = make_source()
    display = DrmDisplay(DisplayConfig(), source)
    with pytest.raises(DisplayError, match="DRM preview could not start"):
        display.open()
    assert all(record.closed for record in rig.records)
    source.close()


def test_close_twice_stops_the_preview_once(rig, screen):
    source = make_source()
    display = DrmDisplay(DisplayConfig(), source)
    display.open()
    display.close()
    display.close()
    source.close()
    assert rig.records[0].preview_stops == 1
    assert rig.records[0].close_count == 1


def test_without_a_known_screen_the_camera_size_is_used(rig, monkeypatch, tmp_path):
    monkeypatch.setattr(drm, "DRM_SYSFS", tmp_path / "nothing")
    source = make_source(800, 600)
    with source, DrmDisplay(DisplayConfig(), source) as display:
        assert display.size == (800, 600)
        assert rig.records[-1].previews[0][1]["width"] == 800


def test_overlay_is_drawn_again_after_the_camera_is_reopened(rig, screen):
    source = make_source()
    with source, DrmDisplay(DisplayConfig(), source) as display:
        rgba = overlay_picture(*display.size)
        display.show_overlay(rgba)
        stalled = rig.records[-1]
        rig.stall_captures = 1
        source.read(0.05)
        reopened = rig.records[-1]
    assert reopened is not stalled
    assert stalled.closed and not stalled.hung
    assert reopened.previews[0][0] is Preview.DRM
    np.testing.assert_array_equal(reopened.overlays[-1], rgba)


def test_overlay_must_be_rgba_uint8(rig, screen):
    source = make_source()
    with source, DrmDisplay(DisplayConfig(), source) as display:
        with pytest.raises(DisplayError, match="RGBA uint8"):
            display.show_overlay(np.zeros((10, 10, 3), np.uint8))
        with pytest.raises(DisplayError, match="RGBA uint8"):
            display.show_overlay(np.zeros((10, 10, 4), np.float32))


def test_screen_size_reads_the_connected_connector(tmp_path):
    root = fake_sysfs(
        tmp_path,
        {
            "card0-HDMI-A-1": ("disconnected", ["3840x2160"]),
            "card1-DSI-1": ("connected", ["800x480i"]),
        },
    )
    assert screen_size(root) == (800, 480)
    assert screen_size(tmp_path / "missing") is None


class OtherSource(FrameSource):
    def open(self):
        pass

    def read(self, timeout):
        raise AssertionError("not read")

    def close(self):
        pass


def test_supported_needs_a_picamera2_source_a_drm_device_and_no_desktop(
    monkeypatch, tmp_path
):
    (tmp_path / "card1").touch()
    monkeypatch.setattr(drm, "DRI_GLOB", str(tmp_path / "card*"))
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    source = make_source()
    assert DrmDisplay.supported(source) is True
    assert DrmDisplay.supported(OtherSource()) is False
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    assert DrmDisplay.supported(source) is False
    monkeypatch.delenv("WAYLAND_DISPLAY")
    monkeypatch.setattr(drm, "DRI_GLOB", str(tmp_path / "none*"))
    assert DrmDisplay.supported(source) is False
