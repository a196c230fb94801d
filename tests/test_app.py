import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from helpers import RUNTIME, text_score

from pi_classifier.app import LiveClassifier
from pi_classifier.config import parse_config
from pi_classifier.displays import framebuffer
from pi_classifier.errors import SourceError, WorkerError
from pi_classifier.labels import Labels
from pi_classifier.overlay import Overlay

WIDTH, HEIGHT = 800, 480


@pytest.fixture
def fake_fb(tmp_path, monkeypatch):
    """A file standing in for /dev/fb0, 800x480 at 32 bits per pixel."""
    sysfs = tmp_path / "sys"
    (sysfs / "fb0").mkdir(parents=True)
    (sysfs / "fb0" / "virtual_size").write_text(f"{WIDTH},{HEIGHT}\n")
    (sysfs / "fb0" / "bits_per_pixel").write_text("32\n")
    (sysfs / "fb0" / "stride").write_text(f"{WIDTH * 4}\n")
    device = tmp_path / "dev" / "fb0"
    device.parent.mkdir()
    device.write_bytes(bytes(WIDTH * HEIGHT * 4))
    monkeypatch.setattr(framebuffer, "SYSFS_ROOT", sysfs)
    return device


def screen(device):
    pixels = np.fromfile(device, np.uint8).reshape(HEIGHT, WIDTH, 4)
    return np.ascontiguousarray(pixels[..., :3])


def config_text(device, images, extra=""):
    return (
        f"runtime: {RUNTIME}\nthreads: 1\n"
        f"camera:\n  source: images\n  device: {images}\n  fps: 20\n"
        f"display:\n  output: framebuffer\n  device: {device}\n  hide_cursor: false\n"
        f"{extra}"
    )


def config_for(device, images, extra=""):
    return parse_config(config_text(device, images, extra))


def start(app, duration=30.0):
    errors = []

    def target():
        try:
            app.run(duration)
        except Exception as error:
            errors.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, errors


def wait_for_text(device, word, timeout=15.0):
    overlay = Overlay(parse_config("").overlay)
    scale, thickness = overlay.label_font(HEIGHT)
    deadline = time.monotonic() + timeout
    best = 0.0
    while time.monotonic() < deadline:
        best = text_score(screen(device), word, scale, thickness)
        if best > 0.9:
            return best
        time.sleep(0.1)
    raise AssertionError(f"{word!r} not on screen after {timeout} s (best {best:.2f})")


@pytest.fixture
def model_dir(models, monkeypatch):
    monkeypatch.setenv("PI_CLASSIFIER_MODEL_DIR", str(models))


def test_banana_on_the_framebuffer(model_dir, fake_fb, images):
    app = LiveClassifier(config_for(fake_fb, images / "banana_0.jpg"))
    thread, errors = start(app)
    try:
        wait_for_text(fake_fb, "banana")
        time.sleep(0.5)
        picture = screen(fake_fb)
        assert picture[-10:, WIDTH // 2].mean() > 200, "photo not shown below panel"
        status = app.state.snapshot()
        assert status.labels[0].label == "banana"
        assert status.frames_shown > 0 and status.frames_dropped == 0
        assert status.inference_fps > 0 and status.healthy()
    finally:
        app.request_stop()
        thread.join(5)
    assert not thread.is_alive() and not errors


def test_reload_applies_aliases_and_rejects_bad_files(model_dir, fake_fb, images,
                                                      tmp_path):
    path = tmp_path / "config.yaml"
    base = config_text(fake_fb, images / "banana_0.jpg")
    path.write_text(base)
    app = LiveClassifier(parse_config(base), str(path))
    thread, errors = start(app)
    try:
        wait_for_text(fake_fb, "banana")
        path.write_text(base + "aliases:\n  banana: PLATANO\n")
        app.request_reload()
        wait_for_text(fake_fb, "PLATANO")
        path.write_text(base + "aliases: [oops\n")
        app.request_reload()
        time.sleep(1.0)
        wait_for_text(fake_fb, "PLATANO")
        assert app.config.aliases == {"banana": "PLATANO"}
    finally:
        app.request_stop()
        thread.join(5)
    assert not errors


def wait_for_log(caplog, text, count=1, timeout=15.0):
    deadline = time.monotonic() + timeout
    while caplog.text.count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not logged {count} times"
        time.sleep(0.05)


def test_reload_whose_parts_cannot_open_keeps_the_old_ones(
        model_dir, fake_fb, images, tmp_path, caplog):
    path = tmp_path / "config.yaml"
    banana, apple = images / "banana_0.jpg", images / "granny_smith_0.jpg"
    base = config_text(fake_fb, banana)
    alias = "aliases:\n  banana: PLATANO\n"
    rejected = "new configuration rejected, keeping the old one"
    path.write_text(base)
    app = LiveClassifier(parse_config(base), str(path))
    thread, errors = start(app)
    try:
        with socket.create_server(("127.0.0.1", 0)) as taken:
            wait_for_text(fake_fb, "banana")
            # A camera that is not there, with an alias: none of it applies.
            path.write_text(base.replace(str(banana), str(tmp_path / "gone.jpg"))
                            + alias)
            app.request_reload()
            wait_for_log(caplog, rejected)
            # A camera that works, then a web port in use: the camera goes back.
            busy = f"web:\n  enabled: true\n  port: {taken.getsockname()[1]}\n"
            path.write_text(base.replace(str(banana), str(apple)) + alias + busy)
            app.request_reload()
            wait_for_log(caplog, rejected, count=2)
        assert app.config.camera.device == str(banana)
        assert app.config.aliases == {}
        assert app.state.snapshot().healthy()
        # Still reloadable, and the banana camera is the one open again: its
        # frames get the new alias.
        path.write_text(base + alias)
        app.request_reload()
        wait_for_text(fake_fb, "PLATANO")
    finally:
        app.request_stop()
        thread.join(5)
    assert "gone.jpg" in caplog.text
    assert "another program uses that port" in caplog.text
    assert not errors


def test_reload_swaps_the_model_without_stopping(model_dir, fake_fb, images, tmp_path):
    path = tmp_path / "config.yaml"
    base = config_text(fake_fb, images / "granny_smith_0.jpg")
    path.write_text(base)
    app = LiveClassifier(parse_config(base), str(path))
    thread, errors = start(app)
    try:
        wait_for_text(fake_fb, "Granny Smith")
        shown_before = app.state.snapshot().frames_shown
        path.write_text(base + "model: mobilenet_v1_0.25_128_quant\n")
        app.request_reload()
        deadline = time.monotonic() + 15
        while app.state.snapshot().model != "mobilenet_v1_0.25_128_quant.tflite":
            assert time.monotonic() < deadline, "model not swapped"
            time.sleep(0.05)
        wait_for_text(fake_fb, "Granny Smith")
        assert app.state.snapshot().frames_shown > shown_before
    finally:
        app.request_stop()
        thread.join(5)
    assert not errors


class BrokenModel:
    labels = Labels(("a", "b"))
    model_path = type("P", (), {"name": "broken.tflite"})()
    runtime = "fake"
    input_size = (8, 8)

    def probabilities(self, image, order="bgr"):
        raise RuntimeError("the model fell over")


def test_repeated_worker_failures_stop_the_program(fake_fb, images):
    config = config_for(fake_fb, images / "banana_0.jpg")
    app = LiveClassifier(config, classifier=BrokenModel())
    with pytest.raises(WorkerError, match="the model fell over"):
        app.run(30)


def test_empty_images_folder_is_a_clear_error(fake_fb, tmp_path):
    config = config_for(fake_fb, tmp_path)
    app = LiveClassifier(config, classifier=BrokenModel())
    with pytest.raises(SourceError):
        app.run(5)


def daemon(config_path, env):
    return subprocess.Popen(
        [sys.executable, "-m", "pi_classifier", "run", "--config", str(config_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_notify_protocol_and_signals(models, tmp_path):
    address = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(address))
    listener.settimeout(20)
    config = tmp_path / "config.yaml"
    config.write_text(f"runtime: {RUNTIME}\nthreads: 1\ncamera:\n"
                      "  source: test-pattern\n  fps: 30\ndisplay:\n  output: null\n")
    env = dict(os.environ, PI_CLASSIFIER_MODEL_DIR=str(models),
               NOTIFY_SOCKET=str(address), WATCHDOG_USEC="2000000",
               JOURNAL_STREAM="8:1234")
    process = daemon(config, env)
    try:
        env_pid = process.pid
        messages = []

        def receive_until(predicate):
            while not predicate():
                messages.append(listener.recv(4096).decode())

        receive_until(lambda: any("READY=1" in m for m in messages))
        ready = next(m for m in messages if "READY=1" in m)
        assert "STATUS=" in ready and "fps" in ready
        receive_until(lambda: any(m == "WATCHDOG=1" for m in messages))
        process.send_signal(signal.SIGHUP)
        receive_until(lambda: any("RELOADING=1" in m for m in messages))
        reloading = next(m for m in messages if "RELOADING=1" in m)
        assert "MONOTONIC_USEC=" in reloading
        count = len(messages)
        receive_until(lambda: any("READY=1" in m for m in messages[count:]))
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        receive_until(lambda: any("STOPPING=1" in m for m in messages))
        code = process.wait(5)
        assert time.monotonic() - started < 2.0
        assert code == 0
        assert env_pid == process.pid
    finally:
        process.kill()
        listener.close()
    stderr = process.stderr.read()
    assert "<6>app: ready" in stderr
    assert "Traceback" not in stderr


def test_sigint_stops_a_slideshow_quickly(models, images, tmp_path):
    env = dict(os.environ, PI_CLASSIFIER_MODEL_DIR=str(models))
    process = subprocess.Popen(
        [sys.executable, "-m", "pi_classifier", "run", "--source",
         f"images:{images}", "--display", "null"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        for line in process.stderr:
            if "ready" in line or time.monotonic() > deadline:
                break
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(5) == 0
        assert time.monotonic() - started < 2.0
    finally:
        process.kill()


def test_missing_display_device_is_a_clear_error(models, tmp_path):
    env = dict(os.environ, PI_CLASSIFIER_MODEL_DIR=str(models))
    config = tmp_path / "config.yaml"
    config.write_text(f"camera:\n  source: test-pattern\ndisplay:\n  output: "
                      f"framebuffer\n  device: {tmp_path / 'fb7'}\n")
    done = subprocess.run([sys.executable, "-m", "pi_classifier", "run", "--config",
                           str(config)], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 74
    assert "fb7" in done.stderr.splitlines()[-1]
    assert "Traceback" not in done.stderr


def test_undecodable_video_is_a_clear_error(models, tmp_path):
    env = dict(os.environ, PI_CLASSIFIER_MODEL_DIR=str(models))
    video = tmp_path / "talk.mp4"
    video.write_bytes(b"\x00" * 5000)
    done = subprocess.run([sys.executable, "-m", "pi_classifier", "run", "--source",
                           f"video:{video}", "--display", "null"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 74
    assert "talk.mp4" in done.stderr.splitlines()[-1]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("v4l2:/dev/video97", "/dev/video97"),
        ("v4l2:/dev/null", "/dev/null"),
        ("images:{empty}", "empty"),
    ],
)
def test_sources_that_cannot_open_are_clear_errors(models, tmp_path, source, expected):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = dict(os.environ, PI_CLASSIFIER_MODEL_DIR=str(models))
    done = subprocess.run([sys.executable, "-m", "pi_classifier", "run", "--source",
                           source.format(empty=empty), "--display", "null"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    last = done.stderr.splitlines()[-1]
    assert done.returncode == 74
    assert last.startswith("pi-classifier: error: ") and expected in last
    assert "Traceback" not in done.stderr
    # OpenCV's own warnings would only repeat the error less clearly.
    assert "WARN" not in done.stderr
