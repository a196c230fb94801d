"""The Picamera2 source, driven by the fake Picamera2 in tests/fakes."""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
import types

import numpy as np
import pytest
from fakes.picamera2 import (
    FakePicamera2,
    Platform,
    i420_from_rgb,
    stream_array,
)

from pi_classifier.config import CameraConfig
from pi_classifier.errors import ConfigError, SourceError
from pi_classifier.sources.picamera2 import (
    Picamera2Source,
    lores_size,
    picamera2_available,
    yuv420_to_rgb,
)

RED, GREEN, BLUE, WHITE = (220, 30, 30), (30, 200, 40), (20, 40, 230), (240, 240, 240)


def make_source(model_size=(224, 224), tries=4, backoff=(0.001, 0.004), **options):
    camera_options = {"width": 640, "height": 480, "fps": 25.0, "frame_timeout": 0.2}
    source_options = {}
    for key, value in options.items():
        camera_key = key in CameraConfig.__annotations__
        (camera_options if camera_key else source_options)[key] = value
    return Picamera2Source(
        CameraConfig(**camera_options),
        model_size,
        picamera2_class=FakePicamera2,
        open_tries=tries,
        backoff=backoff,
        **source_options,
    )


def quadrants(width, height, colours=(RED, GREEN, BLUE, WHITE)):
    """An RGB picture split into four coloured quarters."""
    picture = np.empty((height, width, 3), np.uint8)
    half_w, half_h = width // 2, height // 2
    picture[:half_h, :half_w] = colours[0]
    picture[:half_h, half_w:] = colours[1]
    picture[half_h:, :half_w] = colours[2]
    picture[half_h:, half_w:] = colours[3]
    return picture


def configured(rig, index=0):
    """The configuration the camera settled on, strides included."""
    return rig.records[index].configured


def assert_close(actual, expected, tolerance=4):
    difference = np.abs(np.asarray(actual, int) - np.asarray(expected, int))
    assert difference.max() <= tolerance, f"{actual} is not {expected}"


def retry_delays(caplog):
    return [
        float(match.group(1))
        for record in caplog.records
        if (match := re.search(r"retrying in ([\d.e-]+) s", record.getMessage()))
    ]


# Configuration


def test_configuration_asks_for_main_lores_and_frame_rate(rig):
    with make_source() as source:
        config = configured(rig)
        assert config["main"]["format"] == "RGB888"
        assert config["main"]["size"] == (640, 480)
        assert config["lores"]["format"] == "YUV420"
        # 224 high at the 4:3 main aspect is 298.7 wide, rounded up to even.
        assert config["lores"]["size"] == (300, 224)
        assert config["controls"]["FrameDurationLimits"] == (40000, 40000)
        assert source.lores_size == (300, 224)
        assert source.main_size == (640, 480)


def test_lores_is_the_model_size_when_not_cropping(rig):
    with make_source(crop="none"):
        assert configured(rig)["lores"]["size"] == (224, 224)


def test_lores_size_rounds_odd_model_sizes_up_to_even_and_fits_main():
    assert lores_size((640, 480), (299, 299), "none") == (300, 300)
    assert lores_size((640, 480), (299, 299), "center") == (400, 300)
    assert lores_size((1280, 720), (224, 224), "center") == (400, 224)
    assert lores_size((160, 120), (224, 224), "center") == (160, 120)


def test_odd_camera_size_is_made_even(rig):
    with make_source(width=641, height=481):
        assert configured(rig)["main"]["size"] == (640, 480)


def test_rgb_lores_on_a_pi_5(rig, monkeypatch):
    monkeypatch.setattr(FakePicamera2, "platform", Platform.PISP)
    with make_source() as source:
        assert configured(rig)["lores"]["format"] == "BGR888"
        lores = configured(rig)["lores"]
        rig.push(lores=stream_array(lores, quadrants(300, 224)))
        frame = source.read(0.5)
    # "BGR888" holds [R, G, B] bytes: the model input is taken as it is.
    assert tuple(frame.model_input[10, 10]) == RED
    assert tuple(frame.model_input[-10, -10]) == WHITE


def test_without_a_platform_a_pi_5_is_recognised_from_the_device_tree(
    rig, tmp_path, monkeypatch
):
    monkeypatch.setattr(FakePicamera2, "platform", None)
    (tmp_path / "model").write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")
    with make_source():
        assert configured(rig)["lores"]["format"] == "BGR888"


def test_picamera2s_platform_wins_over_the_device_tree(rig, tmp_path):
    (tmp_path / "model").write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")
    with make_source():
        assert configured(rig)["lores"]["format"] == "YUV420"


def test_lores_format_setting_overrides_detection(rig, monkeypatch):
    monkeypatch.setattr(FakePicamera2, "platform", Platform.PISP)
    with make_source(lores_format="yuv420"):
        assert configured(rig)["lores"]["format"] == "YUV420"


def test_rgb_lores_forced_on_a_pi_4_is_refused_plainly(rig):
    with pytest.raises(SourceError, match="lores stream must be YUV"):
        make_source(lores_format="rgb").open()
    assert rig.records[0].closed


# Pixels


def test_yuv420_with_stride_padding_converts_to_the_right_colours(rig):
    rig.stride_align = 256  # 300 wide: each Y row carries 212 bytes of padding
    with make_source() as source:
        lores = configured(rig)["lores"]
        assert source.lores_size == (300, 224)
        rig.push(lores=i420_from_rgb(quadrants(300, 224), lores["stride"]))
        frame = source.read(0.5)

    model_input = frame.model_input
    assert model_input.shape == (224, 224, 3)
    assert model_input.dtype == np.uint8
    assert model_input.flags.c_contiguous
    assert lores["stride"] == 512
    assert_close(model_input[20, 20], RED)
    assert_close(model_input[20, 200], GREEN)
    assert_close(model_input[200, 20], BLUE)
    assert_close(model_input[200, 200], WHITE)


def test_yuv420_right_edge_is_picture_not_padding(rig):
    rig.stride_align = 128  # 200 wide: 56 bytes of padding per Y row
    with make_source(model_size=(200, 150), crop="none") as source:
        rig.push(lores=i420_from_rgb(quadrants(200, 150, (RED, BLUE, GREEN, RED)), 256))
        frame = source.read(0.5)

    model_input = frame.model_input
    assert model_input.shape == (150, 200, 3)
    assert_close(model_input[:70, -1], np.tile(BLUE, (70, 1)))
    assert_close(model_input[-70:, -1], np.tile(RED, (70, 1)))
    assert_close(model_input[-70:, 0], np.tile(GREEN, (70, 1)))


def test_yuv420_to_rgb_rejects_a_wrong_layout():
    with pytest.raises(SourceError, match="YUV420 layout"):
        yuv420_to_rgb(np.zeros((224, 320), np.uint8), (300, 224))


def test_main_stream_is_the_bgr_image(rig):
    with make_source() as source:
        main = configured(rig)["main"]
        picture = quadrants(640, 480)
        rig.push(main=stream_array(main, picture))
        frame = source.read(0.5)
    assert frame.image.shape == (480, 640, 3)
    assert tuple(frame.image[10, 10]) == RED[::-1]
    assert tuple(frame.image[10, 630]) == GREEN[::-1]
    assert tuple(frame.image[470, 10]) == BLUE[::-1]


# Sequence and time


def test_frames_are_numbered_and_stamped_with_the_sensor_time(rig):
    start = time.monotonic_ns() - 200_000_000
    stamps = [start + k * 40_000_000 for k in range(3)]
    with make_source() as source:
        for stamp in stamps:
            rig.push(metadata={"SensorTimestamp": stamp})
        frames = [source.read(0.5) for _ in stamps]
    assert [frame.sequence for frame in frames] == [0, 1, 2]
    assert [frame.timestamp for frame in frames] == [stamp / 1e9 for stamp in stamps]


def test_without_a_sensor_time_the_arrival_time_is_used(rig):
    with make_source() as source:
        rig.push(metadata={"SensorTimestamp": None})
        before = time.monotonic()
        frame = source.read(0.5)
        after = time.monotonic()
    assert before <= frame.timestamp <= after


def test_every_request_is_released(rig):
    with make_source() as source:
        for _ in range(5):
            source.read(0.5)
    assert rig.records[0].requests_out == 0
    assert rig.records[0].arrays_made.count("main") == 5


# Failures


def test_no_camera_is_retried_with_doubling_pauses_then_given_up(rig, caplog):
    rig.cameras = []
    caplog.set_level(logging.WARNING)
    source = make_source(tries=4)
    with pytest.raises(SourceError, match="no camera was found after 4 tries"):
        source.open()
    assert rig.info_calls == 4
    assert rig.open_attempts == 0
    assert retry_delays(caplog) == [0.001, 0.002, 0.004]
    assert rig.records == []


def test_a_camera_that_shows_up_during_the_retries_is_used(rig):
    rig.missing_for = 2
    with make_source(tries=4) as source:
        source.read(0.5)
    assert rig.open_attempts == 1
    assert len(rig.records) == 1


def test_busy_camera_is_retried_until_it_is_free(rig, caplog):
    rig.busy_opens = 2
    caplog.set_level(logging.WARNING)
    with make_source(tries=4) as source:
        frame = source.read(0.5)
    assert frame.sequence == 0
    assert rig.open_attempts == 3
    assert sum("camera busy" in r.getMessage() for r in caplog.records) == 2


def test_camera_busy_for_every_try_is_a_source_error(rig):
    rig.busy_opens = 10
    with pytest.raises(SourceError, match="in use by another program"):
        make_source(tries=3).open()
    assert rig.open_attempts == 3


def test_busy_when_starting_closes_that_camera_and_retries(rig):
    rig.start_errors = ["Failed to start camera: Device or resource busy"]
    with make_source() as source:
        source.read(0.5)
        assert rig.records[0].closed
        assert not rig.records[1].closed


def test_a_start_that_fails_half_way_closes_the_camera(rig):
    rig.start_errors = ["Failed to start camera: Input/output error"]
    source = make_source()
    with pytest.raises(SourceError, match="Input/output error"):
        source.open()
    assert len(rig.records) == 1
    assert rig.records[0].closed
    with pytest.raises(SourceError, match="not open"):
        source.read(0.5)


def test_stalled_camera_is_closed_and_reopened(rig, caplog):
    caplog.set_level(logging.WARNING)
    with make_source() as source:
        source.read(0.5)
        rig.stall_captures = 1
        frame = source.read(0.05)
    assert frame.sequence == 1
    assert len(rig.records) == 2
    first, second = rig.records
    assert first.closed and first.cancels >= 1
    assert not first.hung, "stop() was left queued behind the timed-out capture"
    assert second.closed
    assert any("no frame within 0.05 s" in r.getMessage() for r in caplog.records)


def test_a_camera_that_never_delivers_gives_up_with_a_source_error(rig):
    rig.stalled = True
    source = make_source(tries=3)
    with source, pytest.raises(SourceError, match=r"no frame within 0\.02 s, 3 times"):
        source.read(0.02)
    assert len(rig.records) == 3
    assert all(record.closed and not record.hung for record in rig.records)


def test_close_twice_closes_the_camera_once(rig):
    source = make_source()
    source.open()
    source.read(0.5)
    source.close()
    source.close()
    assert rig.records[0].close_count == 1
    assert rig.records[0].stop_count == 1


def test_read_after_close_raises(rig):
    source = make_source()
    with source:
        source.read(0.5)
    with pytest.raises(SourceError, match="not open"):
        source.read(0.5)


def test_close_from_another_thread_ends_the_retry_pauses(rig):
    rig.cameras = []
    source = make_source(tries=4, backoff=(60.0, 60.0))
    errors = []

    def open_source():
        try:
            source.open()
        except SourceError as error:
            errors.append(error)

    opener = threading.Thread(target=open_source)
    opener.start()
    while rig.info_calls == 0 and opener.is_alive():
        time.sleep(0.01)
    source.close()
    opener.join(timeout=10)
    assert not opener.is_alive()
    assert "closed while it was being opened" in str(errors[0])


def test_close_from_another_thread_ends_a_stalled_read(rig):
    rig.stalled = True
    source = make_source(tries=2)
    source.open()
    errors = []

    def read():
        try:
            source.read(30.0)
        except SourceError as error:
            errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    while reader.is_alive() and rig.records[0].stalls == 0:
        time.sleep(0.01)
    source.close()
    reader.join(timeout=10)
    assert not reader.is_alive()
    assert "closed" in str(errors[0])
    assert rig.records[0].closed and not rig.records[0].hung


def test_bad_retry_settings_are_a_config_error():
    with pytest.raises(ConfigError):
        make_source(tries=0)


# Preview-only mode


def test_preview_only_frames_take_the_lores_picture_and_never_main(rig):
    source = make_source()
    source.start_drm_preview((0, 0, 1920, 1080))
    with source:
        rig.push(lores=i420_from_rgb(quadrants(300, 224), 320))
        frame = source.read(0.5)
    assert configured(rig)["main"]["format"] == "XRGB8888"
    assert rig.records[0].arrays_made == ["lores"]
    assert frame.image.shape == (224, 300, 3)
    assert_close(frame.image[10, 10], RED[::-1])
    assert_close(frame.image[-10, -10], WHITE[::-1])
    assert frame.model_input.shape == (224, 224, 3)


def test_leaving_preview_mode_reopens_the_camera_for_the_cpu(rig):
    source = make_source()
    source.start_drm_preview((0, 0, 800, 480))
    with source:
        source.read(0.5)
        source.stop_drm_preview()
        frame = source.read(0.5)
    assert rig.records[0].closed and rig.records[0].preview_stops == 1
    assert configured(rig, 1)["main"]["format"] == "RGB888"
    assert rig.records[1].previews[0][0].name == "NULL"
    assert frame.image.shape == (480, 640, 3)


# Availability


def test_picamera2_is_not_available_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)
    assert picamera2_available() is False


def test_picamera2_is_available_when_it_lists_a_camera(rig, monkeypatch):
    module = types.SimpleNamespace(Picamera2=FakePicamera2)
    monkeypatch.setitem(sys.modules, "picamera2", module)
    assert picamera2_available() is True
    rig.cameras = []
    assert picamera2_available() is False


def test_missing_picamera2_package_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)
    source = Picamera2Source(CameraConfig(), (224, 224))
    with pytest.raises(SourceError, match="python3-picamera2"):
        source.open()


def test_camera_chosen_by_number_or_model(rig):
    rig.cameras = [
        {"Model": "imx708", "Id": "/base/imx708@1a", "Num": 0},
        {"Model": "imx219", "Id": "/base/imx219@10", "Num": 1},
    ]
    with make_source(device="1"):
        pass
    with make_source(device="imx219"):
        pass
    assert [record.camera_num for record in rig.records] == [1, 1]
    with pytest.raises(SourceError, match="no camera was found"):
        make_source(device="ov5647", tries=1).open()
