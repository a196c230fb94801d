"""The V4L2 source: device errors, format negotiation and bounded waits.

There is no camera here, so the behaviour of a device is played by a small
stand-in for ``cv2.VideoCapture``; the errors for missing devices and files
that are not devices go through the real OpenCV.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import struct
import threading

import cv2
import numpy as np
import pytest

from pi_classifier.config import CameraConfig
from pi_classifier.errors import SourceError
from pi_classifier.sources import v4l2
from pi_classifier.sources.v4l2 import V4L2Source, fourcc_text

MJPG = cv2.VideoWriter.fourcc(*"MJPG")
YUYV = cv2.VideoWriter.fourcc(*"YUYV")


@pytest.fixture(autouse=True)
def short_driver_waits(monkeypatch):
    monkeypatch.setenv(v4l2.SELECT_TIMEOUT_ENV, "1")


class Camera:
    """How a pretend device behaves, and what was done to it."""

    def __init__(self, *, opens=True, offers_mjpg=True):
        self.opens = opens
        self.offers_mjpg = offers_mjpg
        self.stalled = threading.Event()
        self.captures = []

    def capture_class(self, device, api):
        capture = FakeCapture(self, device, api)
        self.captures.append(capture)
        return capture


class FakeCapture:
    """Answers like cv2.VideoCapture on a V4L2 device."""

    def __init__(self, camera, device, api):
        self.camera = camera
        self.device = device
        self.api = api
        self.released = threading.Event()
        self.count = 0
        self.properties = {
            cv2.CAP_PROP_FOURCC: float(YUYV),
            cv2.CAP_PROP_FRAME_WIDTH: 640.0,
            cv2.CAP_PROP_FRAME_HEIGHT: 480.0,
            cv2.CAP_PROP_FPS: 30.0,
        }

    def isOpened(self):  # noqa: N802 - the OpenCV name
        return self.camera.opens

    def set(self, prop, value):
        if (
            prop == cv2.CAP_PROP_FOURCC
            and value == MJPG
            and not self.camera.offers_mjpg
        ):
            return False
        self.properties[prop] = float(value)
        return True

    def get(self, prop):
        return self.properties.get(prop, 0.0)

    def read(self):
        if self.camera.stalled.wait(0.003):
            return False, None  # what OpenCV answers after its select() timeout
        self.count += 1
        width = int(self.properties[cv2.CAP_PROP_FRAME_WIDTH])
        height = int(self.properties[cv2.CAP_PROP_FRAME_HEIGHT])
        return True, np.full((height, width, 3), self.count % 256, np.uint8)

    def release(self):
        self.released.set()


def camera_config(device, **changes):
    settings = {
        "source": "v4l2",
        "device": None if device is None else str(device),
        "width": 320,
        "height": 240,
        "fps": 30.0,
        "frame_timeout": 0.5,
    }
    settings.update(changes)
    return CameraConfig(**settings)


@pytest.fixture
def node(tmp_path):
    path = tmp_path / "video0"
    path.touch()
    return path


def test_frames_come_in_order_at_the_requested_size(node):
    camera = Camera()
    source = V4L2Source(camera_config(node), capture_class=camera.capture_class)

    with source:
        frames = [source.read(1.0) for _ in range(5)]

    [capture] = camera.captures
    assert capture.device == str(node)
    assert capture.api == cv2.CAP_V4L2
    assert capture.properties[cv2.CAP_PROP_FOURCC] == MJPG
    assert [frame.sequence for frame in frames] == list(range(5))
    shades = [int(frame.image[0, 0, 0]) for frame in frames]
    assert shades == sorted(set(shades))  # each frame newer than the last
    for frame in frames:
        assert frame.image.shape == (240, 320, 3)
    for earlier, later in itertools.pairwise(frames):
        assert later.timestamp > earlier.timestamp
    assert capture.released.is_set()
    assert source.device == str(node)


def test_device_without_mjpg_keeps_its_own_format(node, caplog):
    camera = Camera(offers_mjpg=False)
    source = V4L2Source(camera_config(node), capture_class=camera.capture_class)

    with caplog.at_level(logging.INFO, logger=v4l2.__name__), source:
        frame = source.read(1.0)

    [capture] = camera.captures
    assert capture.properties[cv2.CAP_PROP_FOURCC] == YUYV
    assert frame.image.shape == (240, 320, 3)
    assert "does not offer MJPG; using its default format YUYV" in caplog.text


def test_device_that_delivers_nothing_times_out_naming_it(node):
    camera = Camera()
    camera.stalled.set()
    source = V4L2Source(camera_config(node), capture_class=camera.capture_class)

    with pytest.raises(
        SourceError, match=r"delivered no frame within 0\.5 s"
    ) as caught:
        source.open()

    assert str(node) in str(caught.value)
    assert camera.captures[0].released.wait(5.0)


def test_read_times_out_when_the_camera_stops(node):
    camera = Camera()
    source = V4L2Source(camera_config(node), capture_class=camera.capture_class)

    with source:
        source.read(1.0)
        camera.stalled.set()
        with pytest.raises(SourceError, match="timed out waiting for a frame") as err:
            source.read(0.1)

    assert str(node) in str(err.value)


def test_device_that_does_not_open_is_named(node):
    camera = Camera(opens=False)
    source = V4L2Source(camera_config(node), capture_class=camera.capture_class)

    with pytest.raises(
        SourceError, match=f"cannot open V4L2 device {re.escape(str(node))}$"
    ):
        source.open()


def test_missing_device_is_named(tmp_path):
    source = V4L2Source(camera_config(tmp_path / "video7"))

    with pytest.raises(
        SourceError, match=re.escape(f"V4L2 device {tmp_path}/video7 does not")
    ):
        source.open()


def test_missing_device_index_is_named_as_its_node():
    if os.path.exists("/dev/video63"):
        pytest.skip("this machine has a /dev/video63")
    source = V4L2Source(camera_config("63"))

    with pytest.raises(SourceError, match="V4L2 device /dev/video63 does not exist"):
        source.open()


def test_file_that_is_not_a_device_fails_in_real_opencv(node):
    source = V4L2Source(camera_config(node))

    with pytest.raises(
        SourceError, match=f"cannot open V4L2 device {re.escape(str(node))}"
    ):
        source.open()
    source.close()


def test_scan_takes_the_first_device_that_delivers(tmp_path, monkeypatch):
    for name in ("video2", "video10"):
        (tmp_path / name).touch()
    monkeypatch.setattr(v4l2, "DEVICE_GLOB", str(tmp_path / "video*"))
    monkeypatch.setattr(v4l2, "query_card", lambda path: ("Test camera", True))
    broken, working = Camera(opens=False), Camera()

    def capture_class(device, api):
        chosen = broken if device.endswith("video2") else working
        return chosen.capture_class(device, api)

    with V4L2Source(camera_config(None), capture_class=capture_class) as source:
        frame = source.read(1.0)

    assert source.device == str(tmp_path / "video10")
    assert frame.sequence == 0
    assert len(broken.captures) == len(working.captures) == 1


def test_scan_reports_every_failure(tmp_path, monkeypatch):
    for name in ("video2", "video10"):
        (tmp_path / name).touch()
    monkeypatch.setattr(v4l2, "DEVICE_GLOB", str(tmp_path / "video*"))
    monkeypatch.setattr(v4l2, "query_card", lambda path: None)
    camera = Camera(opens=False)
    source = V4L2Source(camera_config(None), capture_class=camera.capture_class)

    with pytest.raises(SourceError, match="no V4L2 device delivered frames") as caught:
        source.open()

    message = str(caught.value)
    assert message.index("video2") < message.index("video10")


def test_scan_skips_nodes_that_are_not_cameras(tmp_path, monkeypatch):
    (tmp_path / "video11").touch()  # answers no V4L2 query, like a codec node
    monkeypatch.setattr(v4l2, "DEVICE_GLOB", str(tmp_path / "video*"))

    with pytest.raises(SourceError, match=r"none of .*video11 captures video"):
        V4L2Source(camera_config(None)).open()


def test_scan_without_devices(tmp_path, monkeypatch):
    monkeypatch.setattr(v4l2, "DEVICE_GLOB", str(tmp_path / "video*"))

    with pytest.raises(SourceError, match="no /dev/video\\* devices"):
        V4L2Source(camera_config(None)).open()


def _capability(card, capabilities, device_caps=0):
    return struct.pack(
        "=16s32s32sIII12x", b"uvcvideo", card, b"usb-1", 0x60000, capabilities,
        device_caps,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("capabilities", "device_caps", "captures"),
    [
        (0x84A00001, 0x04200001, True),  # a UVC webcam
        (0x84A00001, 0x04A00000, False),  # the same webcam's metadata node
        (0x84204000, 0x04204000, False),  # a memory-to-memory codec
        (0x00000001, 0, True),  # an old driver without device caps
        (0x80001000, 0x00001000, True),  # a multi-planar capture node
    ],
)
def test_capability_parsing(capabilities, device_caps, captures):
    raw = _capability(b"HD Webcam\0junk", capabilities, device_caps)

    assert v4l2._parse_capability(raw) == ("HD Webcam", captures)


def test_query_card_on_a_plain_file_says_it_does_not_capture(node):
    assert v4l2.query_card(str(node)) == ("", False)


def test_fourcc_text():
    assert fourcc_text(float(MJPG)) == "MJPG"
    assert fourcc_text(0.0) == "unknown"
