"""The source factory, the --source shorthand, the test pattern and pacing."""

from __future__ import annotations

import importlib.util
import itertools
import sys
import threading
import time
import types

import numpy as np
import pytest

from pi_classifier.config import CameraConfig
from pi_classifier.errors import ConfigError, SourceError, UsageError
from pi_classifier.sources import create_source, parse_source_spec, v4l2
from pi_classifier.sources.images import ImagesSource
from pi_classifier.sources.pattern import BARS_BGR, TestPatternSource, render_strip
from pi_classifier.sources.v4l2 import V4L2Source
from pi_classifier.sources.video import VideoSource

MODEL_SIZE = (224, 224)


def pattern(**changes) -> TestPatternSource:
    settings = {"source": "test-pattern", "width": 96, "height": 64, "fps": 500.0}
    settings.update(changes)
    return TestPatternSource(CameraConfig(**settings))


# --- parse_source_spec ------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("images:/srv/photos", {"source": "images", "device": "/srv/photos"}),
        ("images:/srv/*.jpg", {"source": "images", "device": "/srv/*.jpg"}),
        ("video:/tmp/clip.mp4", {"source": "video", "device": "/tmp/clip.mp4"}),
        ("v4l2:/dev/video1", {"source": "v4l2", "device": "/dev/video1"}),
        ("v4l2:2", {"source": "v4l2", "device": "2"}),
        ("v4l2", {"source": "v4l2", "device": None}),
        ("test-pattern", {"source": "test-pattern", "device": None}),
        ("picamera2", {"source": "picamera2", "device": None}),
        ("auto", {"source": "auto", "device": None}),
        (" Images:C:/photos ", {"source": "images", "device": "C:/photos"}),
    ],
)
def test_parse_source_spec(spec, expected):
    assert parse_source_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("webcam", "unknown source 'webcam'"),
        ("", "unknown source ''"),
        ("video", "the video source needs a video file"),
        ("images:", "the images source needs a folder or a glob"),
        ("test-pattern:7", "takes nothing after the colon"),
        ("auto:/dev/video0", "takes nothing after the colon"),
    ],
)
def test_parse_source_spec_refuses(spec, complaint):
    with pytest.raises(UsageError, match=complaint):
        parse_source_spec(spec)


# --- the test pattern ---------------------------------------------------------


def test_render_strip_has_the_bars_then_repeats():
    strip = render_strip(80, 60)

    assert strip.shape == (60, 160, 3)
    assert strip.dtype == np.uint8
    assert np.array_equal(strip[:, :80], strip[:, 80:])
    bar_width = 80 // len(BARS_BGR)
    for index, colour in enumerate(BARS_BGR):
        assert tuple(strip[10, index * bar_width + bar_width // 2]) == colour


def test_pattern_frames_have_size_sequence_and_all_differ():
    with pattern() as source:
        frames = [source.read(1.0) for _ in range(12)]

    assert [frame.sequence for frame in frames] == list(range(12))
    for frame in frames:
        assert frame.image.shape == (64, 96, 3)
        assert frame.image.dtype == np.uint8
        assert frame.model_input is None
    for earlier, later in itertools.pairwise(frames):
        assert later.timestamp > earlier.timestamp
        assert not np.array_equal(earlier.image, later.image)


def test_pattern_frames_are_independent_copies():
    with pattern(fps=1000.0) as source:
        first = source.read(1.0)
        first.image[:] = 0
        second = source.read(1.0)

    assert second.image.any()


def test_pattern_moves_the_bars():
    with pattern(width=160, height=120, fps=10.0) as source:
        # 160 px over 4 s at 10 fps: the bars move 4 px per frame.
        first = source.read(1.0).image
        second = source.read(1.0).image

    row = 100  # in the grey ramp, below the frame number
    assert np.array_equal(second[row, :-4], first[row, 4:])


def test_close_twice_and_read_after_close():
    source = pattern()
    source.open()
    source.read(1.0)
    source.close()
    source.close()

    with pytest.raises(SourceError, match="not open"):
        source.read(1.0)


def test_reopen_starts_the_sequence_again():
    source = pattern()
    with source:
        source.read(1.0)
        source.read(1.0)
    with source:
        assert source.read(1.0).sequence == 0


# --- pacing -------------------------------------------------------------------


def test_read_times_out_when_the_next_frame_is_not_due():
    with pattern(fps=0.2) as source:
        source.read(1.0)
        with pytest.raises(SourceError, match="timed out waiting for a frame"):
            source.read(0.05)


def test_picture_made_before_a_timeout_is_delivered_next():
    with pattern(fps=2.0) as source:
        source.read(1.0)
        with pytest.raises(SourceError):
            source.read(0.01)
        frame = source.read(2.0)

    assert frame.sequence == 1


def test_close_from_another_thread_ends_a_waiting_read():
    source = pattern(fps=0.01)  # the second frame is due in 100 s
    source.open()
    source.read(1.0)
    errors = []

    def second_read():
        try:
            source.read(60.0)
        except SourceError as error:
            errors.append(str(error))

    reader = threading.Thread(target=second_read)
    reader.start()
    for _ in range(2000):  # until the read has made its picture and waits
        if source._pending is not None:
            break
        time.sleep(0.001)
    source.close()
    reader.join(20.0)  # far less than the 60 s the read would otherwise wait

    assert not reader.is_alive()
    assert errors == ["test pattern 96x64 was closed while waiting for a frame"]


# --- create_source ------------------------------------------------------------


@pytest.fixture
def no_v4l2_devices(monkeypatch, tmp_path):
    monkeypatch.setattr(v4l2, "DEVICE_GLOB", str(tmp_path / "video*"))
    return tmp_path


@pytest.fixture
def fake_picamera2(monkeypatch):
    """A stand-in for pi_classifier.sources.picamera2 that records its use."""
    module = types.ModuleType("pi_classifier.sources.picamera2")
    module.available = False
    module.made = []

    class Picamera2Source:
        def __init__(self, camera, model_size, *, picamera2_class=None):
            module.made.append((camera, model_size))

    module.Picamera2Source = Picamera2Source
    module.picamera2_available = lambda: module.available
    monkeypatch.setitem(sys.modules, "pi_classifier.sources.picamera2", module)
    return module


@pytest.mark.parametrize(
    ("name", "device", "kind"),
    [
        ("test-pattern", None, TestPatternSource),
        ("images", "/srv/photos", ImagesSource),
        ("video", "/srv/clip.mp4", VideoSource),
        ("v4l2", "/dev/video3", V4L2Source),
        ("v4l2", None, V4L2Source),
    ],
)
def test_create_source_by_name(name, device, kind):
    source = create_source(CameraConfig(source=name, device=device), MODEL_SIZE)

    assert isinstance(source, kind)
    assert source.name == name


@pytest.mark.parametrize("name", ["images", "video"])
def test_create_source_needs_a_device(name):
    with pytest.raises(ConfigError, match=r"camera\.device must name"):
        create_source(CameraConfig(source=name), MODEL_SIZE)


def test_create_source_picamera2(fake_picamera2):
    camera = CameraConfig(source="picamera2", width=1280, height=720)

    create_source(camera, MODEL_SIZE)

    assert fake_picamera2.made == [(camera, MODEL_SIZE)]


def test_auto_prefers_picamera2(fake_picamera2, no_v4l2_devices):
    (no_v4l2_devices / "video0").touch()
    fake_picamera2.available = True

    create_source(CameraConfig(source="auto"), (160, 160))

    [(camera, model_size)] = fake_picamera2.made
    assert camera.source == "picamera2"
    assert model_size == (160, 160)


def test_auto_without_any_camera_says_what_it_tried(fake_picamera2, no_v4l2_devices):
    with pytest.raises(SourceError) as caught:
        create_source(CameraConfig(source="auto"), MODEL_SIZE)

    message = str(caught.value)
    assert message.startswith("no camera found: tried Picamera2 (")
    assert message.endswith("and V4L2 (no /dev/video* devices)")
    assert fake_picamera2.made == []


def test_auto_names_the_missing_picamera2_package(fake_picamera2, no_v4l2_devices):
    if importlib.util.find_spec("picamera2") is not None:
        pytest.skip("the picamera2 package is installed here")

    with pytest.raises(SourceError, match=r"python3-picamera2 is not installed"):
        create_source(CameraConfig(source="auto"), MODEL_SIZE)


def test_auto_skips_nodes_that_do_not_capture(fake_picamera2, no_v4l2_devices):
    (no_v4l2_devices / "video10").touch()  # a plain file answers no V4L2 query

    with pytest.raises(SourceError, match=r"V4L2 \(none of .*video10 captures video"):
        create_source(CameraConfig(source="auto"), MODEL_SIZE)


def test_auto_falls_back_to_v4l2(fake_picamera2, no_v4l2_devices, monkeypatch):
    (no_v4l2_devices / "video0").touch()
    monkeypatch.setattr(v4l2, "query_card", lambda path: ("Test camera", True))

    source = create_source(CameraConfig(source="auto"), MODEL_SIZE)

    assert isinstance(source, V4L2Source)
    assert fake_picamera2.made == []


def test_auto_with_the_real_picamera2_module(monkeypatch, no_v4l2_devices):
    module = pytest.importorskip("pi_classifier.sources.picamera2")
    monkeypatch.setattr(module, "picamera2_available", lambda: False)

    with pytest.raises(SourceError, match="no camera found: tried Picamera2"):
        create_source(CameraConfig(source="auto"), MODEL_SIZE)


def test_missing_opencv_is_a_plain_source_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    monkeypatch.delitem(sys.modules, "pi_classifier.sources.pattern")

    with pytest.raises(SourceError, match="needs OpenCV"):
        create_source(CameraConfig(source="test-pattern"), MODEL_SIZE)
