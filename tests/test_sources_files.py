"""The slideshow and video-file sources, on real photos and a written video."""

from __future__ import annotations

import itertools
import logging
import shutil

import cv2
import numpy as np
import pytest

from pi_classifier.config import CameraConfig
from pi_classifier.errors import SourceError
from pi_classifier.sources import images as images_module
from pi_classifier.sources.images import ImagesSource, fit_within
from pi_classifier.sources.video import VideoSource

WIDTH, HEIGHT = 640, 480


def slideshow(device, **changes) -> ImagesSource:
    settings = {
        "source": "images",
        "device": str(device),
        "width": WIDTH,
        "height": HEIGHT,
        "fps": 1000.0,
        "slide_seconds": 0.002,  # two frames per slide
    }
    settings.update(changes)
    return ImagesSource(CameraConfig(**settings))


def read_frames(source, count):
    return [source.read(2.0) for _ in range(count)]


# --- ImagesSource -------------------------------------------------------------


def test_slideshow_of_a_folder_shows_every_photo_in_order_and_loops(images):
    photos = [p for p in images.iterdir() if p.suffix in (".jpg", ".bmp")]

    with slideshow(images) as source:
        files = source.files
        frames = read_frames(source, 2 * len(files) + 4)

    assert sorted(files) == sorted(photos)
    names = [file.name for file in files]
    assert names.index("fruit_5.jpg") < names.index("fruit_12.jpg")
    for number, frame in enumerate(frames):
        photo = files[number // 2 % len(files)]
        expected = fit_within(cv2.imread(str(photo)), WIDTH, HEIGHT)
        assert np.array_equal(frame.image, expected), photo.name
        assert frame.sequence == number
    for earlier, later in itertools.pairwise(frames):
        assert later.timestamp > earlier.timestamp


def test_slideshow_keeps_small_photos_and_shrinks_large_ones(images):
    with slideshow(images) as source:
        files = source.files
        frames = read_frames(source, 2 * len(files))[::2]

    for photo, frame in zip(files, frames, strict=True):
        height, width = cv2.imread(str(photo)).shape[:2]
        shown_height, shown_width = frame.image.shape[:2]
        if width <= WIDTH and height <= HEIGHT:
            assert (shown_width, shown_height) == (width, height), photo.name
        else:
            assert shown_width <= WIDTH and shown_height <= HEIGHT, photo.name
            assert shown_width == WIDTH or shown_height == HEIGHT, photo.name
            assert abs(shown_width / shown_height - width / height) < 0.02


def test_slideshow_of_a_glob_takes_only_the_matches(images):
    bitmaps = sorted(images.glob("*.bmp"))

    with slideshow(images / "*.bmp") as source:
        files = source.files
        frames = read_frames(source, 2 * len(files))

    assert sorted(files) == bitmaps
    for number, frame in enumerate(frames):
        expected = fit_within(cv2.imread(str(files[number // 2])), WIDTH, HEIGHT)
        assert np.array_equal(frame.image, expected)


def test_frames_of_one_slide_are_separate_copies(images):
    with slideshow(images / "owl.jpg") as source:
        first = source.read(2.0)
        original = first.image.copy()
        first.image[:] = 0
        second = source.read(2.0)

    assert np.array_equal(second.image, original)


def test_slide_lasts_slide_seconds_at_the_frame_rate(images):
    with slideshow(images / "*.bmp", fps=500.0, slide_seconds=0.01) as source:
        frames = read_frames(source, 12)  # five frames per slide

    firsts = [0, 5, 10]
    for number, frame in enumerate(frames):
        start = max(first for first in firsts if first <= number)
        assert np.array_equal(frame.image, frames[start].image)
    assert not np.array_equal(frames[4].image, frames[5].image)
    assert not np.array_equal(frames[9].image, frames[10].image)


def test_undecodable_file_is_logged_once_and_skipped(images, tmp_path, caplog):
    shutil.copy(images / "owl.jpg", tmp_path / "a_owl.jpg")
    (tmp_path / "b_broken.jpg").write_bytes(b"\xff\xd8 this is not a JPEG at all")
    shutil.copy(images / "cat.bmp", tmp_path / "c_cat.bmp")
    (tmp_path / "notes.txt").write_text("not a photo and not looked at")
    owl = cv2.imread(str(tmp_path / "a_owl.jpg"))
    cat = cv2.imread(str(tmp_path / "c_cat.bmp"))

    with (
        caplog.at_level(logging.WARNING, logger=images_module.__name__),
        slideshow(tmp_path) as source,
    ):
        frames = read_frames(source, 12)  # three times round

    assert len(source.files) == 3
    expected = [owl, owl, cat, cat] * 3
    for frame, picture in zip(frames, expected, strict=True):
        assert np.array_equal(frame.image, picture)
    warnings = [r for r in caplog.records if "b_broken.jpg" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize("kind", ["empty folder", "glob", "missing folder"])
def test_no_images_is_a_source_error_naming_the_place(tmp_path, kind):
    device = {
        "empty folder": tmp_path,
        "glob": tmp_path / "*.png",
        "missing folder": tmp_path / "nowhere",
    }[kind]
    (tmp_path / "readme.txt").write_text("no photos here")
    source = slideshow(device)

    with pytest.raises(SourceError, match="no images found in") as caught:
        source.open()
    assert str(device) in str(caught.value)


def test_only_undecodable_images_is_a_source_error(tmp_path):
    (tmp_path / "one.jpg").write_bytes(b"broken")
    (tmp_path / "two.png").write_bytes(b"also broken")
    source = slideshow(tmp_path)

    with pytest.raises(SourceError, match="none of the images in") as caught:
        source.open()
    assert str(tmp_path) in str(caught.value)


# --- VideoSource --------------------------------------------------------------

SHADES = (20, 70, 120, 170, 220)


@pytest.fixture
def clip(tmp_path):
    """A five-frame MJPG video at 100 fps, each frame one flat grey."""
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter.fourcc(*"MJPG"), 100.0, (64, 48)
    )
    assert writer.isOpened()
    for shade in SHADES:
        writer.write(np.full((48, 64, 3), shade, np.uint8))
    writer.release()
    return path


def video(path, **changes) -> VideoSource:
    settings = {"source": "video", "device": str(path), "fps": 7.0}
    settings.update(changes)
    return VideoSource(CameraConfig(**settings))


def test_video_plays_at_its_own_rate_and_loops(clip):
    with video(clip) as source:
        rate = source.fps
        frames = read_frames(source, 3 * len(SHADES) + 2)

    assert rate == pytest.approx(100.0)
    for number, frame in enumerate(frames):
        assert frame.sequence == number
        assert frame.image.shape == (48, 64, 3)
        assert abs(frame.image.mean() - SHADES[number % len(SHADES)]) < 8
    for earlier, later in itertools.pairwise(frames):
        assert later.timestamp > earlier.timestamp


def test_video_that_cannot_be_decoded_names_the_file(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42 and then nothing sensible" * 20)

    with pytest.raises(SourceError, match="cannot decode video file") as caught:
        video(path).open()
    assert str(path) in str(caught.value)


def test_missing_video_names_the_file(tmp_path):
    path = tmp_path / "gone.mp4"

    with pytest.raises(SourceError, match="does not exist") as caught:
        video(path).open()
    assert str(path) in str(caught.value)


def test_video_close_twice_is_safe(clip):
    source = video(clip)
    source.open()
    source.read(2.0)
    source.close()
    source.close()

    with pytest.raises(SourceError):
        source.read(2.0)
