import threading
import time

import numpy as np
import pytest

from pi_classifier.errors import WorkerError
from pi_classifier.frames import Frame
from pi_classifier.labels import Labels
from pi_classifier.smoothing import LabelSmoother
from pi_classifier.worker import InferenceWorker


class SlowModel:
    """Scores each frame by its first pixel, slowly, recording what it saw."""

    labels = Labels(tuple(f"class {i}" for i in range(4)))

    def __init__(self, delay=0.05, fail=0):
        self.delay = delay
        self.seen = []
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()

    def probabilities(self, image, order="bgr"):
        self.gate.wait(5)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("boom")
        time.sleep(self.delay)
        self.seen.append(int(image[0, 0, 0]))
        result = np.zeros(4, np.float32)
        result[int(image[0, 0, 0]) % 4] = 1.0
        return result


def frame(number):
    image = np.full((4, 4, 3), number, np.uint8)
    return Frame(image, number, time.monotonic())


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def smoother():
    return LabelSmoother(1.0, 0.5, 0.3, 3)


def test_newest_frame_wins_and_older_ones_are_dropped():
    model = SlowModel()
    worker = InferenceWorker(model, smoother())
    model.gate.clear()
    worker.start()
    worker.submit(frame(1))
    time.sleep(0.05)
    for number in range(2, 10):
        worker.submit(frame(number))
    model.gate.set()
    wait_for(lambda: worker.latest() is not None and worker.latest().sequence == 9)
    worker.stop(2)
    assert model.seen == [1, 9]
    assert worker.skipped == 7


def test_submit_never_waits_for_inference():
    model = SlowModel(delay=0.5)
    worker = InferenceWorker(model, smoother())
    worker.start()
    started = time.monotonic()
    for number in range(100):
        worker.submit(frame(number))
    took = time.monotonic() - started
    worker.stop(2)
    assert took < 0.25


def test_result_carries_the_frame_sequence_and_timestamp():
    worker = InferenceWorker(SlowModel(delay=0), smoother())
    worker.start()
    sent = frame(6)
    worker.submit(sent)
    wait_for(lambda: worker.latest() is not None)
    result = worker.latest()
    worker.stop(2)
    assert (result.sequence, result.timestamp) == (6, sent.timestamp)
    assert result.shown == ((2, 1.0),)
    assert result.finished >= sent.timestamp


def test_failures_are_survived_then_fatal():
    model = SlowModel(delay=0, fail=2)
    worker = InferenceWorker(model, smoother(), max_failures=3)
    worker.start()
    for number in range(3):
        worker.submit(frame(number))
        time.sleep(0.3)
    wait_for(lambda: worker.latest() is not None)
    assert worker.alive
    worker.check()
    model.fail = 10
    for number in range(10, 16):
        worker.submit(frame(number))
        time.sleep(0.35)
    wait_for(lambda: not worker.alive)
    with pytest.raises(WorkerError, match="inference failed"):
        worker.check()
    worker.stop(2)


def test_stop_is_prompt_when_idle():
    worker = InferenceWorker(SlowModel(), smoother())
    worker.start()
    started = time.monotonic()
    worker.stop(2)
    assert time.monotonic() - started < 1.0
    assert not worker.alive


def test_swap_model_takes_effect():
    first, second = SlowModel(delay=0), SlowModel(delay=0)
    worker = InferenceWorker(first, smoother())
    worker.start()
    worker.submit(frame(1))
    wait_for(lambda: first.seen)
    worker.swap_model(second)
    worker.submit(frame(2))
    wait_for(lambda: second.seen)
    worker.stop(2)
    assert second.seen == [2]
