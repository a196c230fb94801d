"""The sd_notify client against a real AF_UNIX datagram socket bound here."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from pi_classifier.notify import Notifier, invocation_id, running_under_systemd

RECEIVE_TIMEOUT = 5.0


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _bind(address: str | bytes) -> socket.socket:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(address)
    receiver.settimeout(RECEIVE_TIMEOUT)
    return receiver


@pytest.fixture(params=["path", "abstract"])
def systemd(request, tmp_path: Path):
    """A socket standing in for systemd's, and the NOTIFY_SOCKET naming it."""
    if request.param == "path":
        path = tmp_path / "notify.sock"
        receiver, value = _bind(str(path)), str(path)
    else:
        name = f"pi-classifier-test-{uuid.uuid4().hex}"
        receiver, value = _bind(b"\0" + name.encode()), "@" + name
    yield receiver, value
    receiver.close()


def _drained(receiver: socket.socket) -> list[bytes]:
    """Every datagram already queued, without waiting for more."""
    receiver.setblocking(False)
    messages = []
    try:
        while True:
            messages.append(receiver.recv(4096))
    except BlockingIOError:
        pass
    receiver.settimeout(RECEIVE_TIMEOUT)
    return messages


def test_ready_with_status_is_received_byte_exact(systemd) -> None:
    receiver, value = systemd
    with Notifier({"NOTIFY_SOCKET": value}) as notifier:
        assert notifier.enabled
        assert notifier.ready("classifying mobilenet_v2 on picamera2")
        assert notifier.ready()

    expected = b"READY=1\nSTATUS=classifying mobilenet_v2 on picamera2"
    assert receiver.recv(4096) == expected
    assert receiver.recv(4096) == b"READY=1"


def test_reloading_carries_the_monotonic_clock_in_microseconds(systemd) -> None:
    receiver, value = systemd
    notifier = Notifier({"NOTIFY_SOCKET": value})

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.close()

    first, second = receiver.recv(4096).split(b"\n")
    assert first == b"RELOADING=1"
    key, _, usec = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert usec.isdigit()
    assert before <= int(usec) <= after


def test_stopping_and_status(systemd) -> None:
    receiver, value = systemd
    notifier = Notifier({"NOTIFY_SOCKET": value})

    assert notifier.status("camera lost\nretrying")
    assert notifier.stopping()
    notifier.close()

    assert receiver.recv(4096) == b"STATUS=camera lost retrying"
    assert receiver.recv(4096) == b"STOPPING=1"


def test_status_keeps_non_ascii_text_as_utf8(systemd) -> None:
    receiver, value = systemd
    notifier = Notifier({"NOTIFY_SOCKET": value})

    notifier.status("café 21.5 °C")
    notifier.close()

    assert receiver.recv(4096) == "STATUS=café 21.5 °C".encode()


def test_watchdog_is_sent_at_most_every_half_interval(systemd) -> None:
    receiver, value = systemd
    clock = FakeClock()
    env = {"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "10000000",
           "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier(env, clock=clock)
    assert notifier.watchdog_interval() == 10.0

    sent = []
    for step in (0.0, 1.0, 4.9, 5.0, 6.0, 9.9, 10.0, 30.0):
        clock.now = 1000.0 + step
        sent.append(notifier.watchdog())
    notifier.stopping()
    notifier.close()

    assert sent == [True, False, False, True, False, False, True, True]
    assert _drained(receiver) == [b"WATCHDOG=1"] * 4 + [b"STOPPING=1"]


def test_watchdog_without_watchdog_pid_is_ours(systemd) -> None:
    receiver, value = systemd
    notifier = Notifier({"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "2000000"})

    assert notifier.watchdog_interval() == 2.0
    assert notifier.watchdog()
    notifier.close()

    assert receiver.recv(4096) == b"WATCHDOG=1"


def test_watchdog_meant_for_another_process_is_not_sent(systemd) -> None:
    receiver, value = systemd
    env = {"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "10000000",
           "WATCHDOG_PID": str(os.getpid() + 1)}
    notifier = Notifier(env)

    assert notifier.watchdog_interval() is None
    assert not notifier.watchdog()
    notifier.stopping()
    notifier.close()

    # The only datagram queued is the one sent after the refused watchdog.
    assert _drained(receiver) == [b"STOPPING=1"]


@pytest.mark.parametrize("usec", ["", "0", "-5", "ten"])
def test_watchdog_off_when_the_interval_is_missing_or_bad(systemd, usec) -> None:
    receiver, value = systemd
    notifier = Notifier({"NOTIFY_SOCKET": value, "WATCHDOG_USEC": usec})

    assert notifier.watchdog_interval() is None
    assert not notifier.watchdog()
    notifier.stopping()
    notifier.close()

    assert _drained(receiver) == [b"STOPPING=1"]


def test_without_notify_socket_everything_is_a_silent_no_op(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="pi_classifier.notify")
    notifier = Notifier({"WATCHDOG_USEC": "1000000"})

    assert not notifier.enabled
    assert notifier.ready("up") is False
    assert notifier.reloading() is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    notifier.close()
    assert caplog.records == []


def test_default_environment_is_the_process_environment(systemd, monkeypatch) -> None:
    receiver, value = systemd
    monkeypatch.setenv("NOTIFY_SOCKET", value)

    notifier = Notifier()
    notifier.ready()
    notifier.close()

    assert receiver.recv(4096) == b"READY=1"


def test_send_error_is_logged_once_and_never_raised(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="pi_classifier.notify")
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens"),
                         "WATCHDOG_USEC": "1000000"})

    assert notifier.enabled
    assert notifier.ready("up") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    notifier.close()

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "cannot notify systemd" in warnings[0].getMessage()
    assert len(caplog.records) == 3


def test_unsupported_address_kind_is_ignored_with_a_warning(caplog) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})

    assert not notifier.enabled
    assert notifier.ready() is False
    assert "only AF_UNIX" in caplog.text


def test_calls_after_close_send_nothing(systemd) -> None:
    receiver, value = systemd
    notifier = Notifier({"NOTIFY_SOCKET": value})
    notifier.status("first")
    notifier.close()
    notifier.close()

    assert notifier.status("second") is False
    assert notifier.ready() is False
    assert _drained(receiver) == [b"STATUS=first"]


def test_messages_from_many_threads_arrive_whole(systemd) -> None:
    receiver, value = systemd
    notifier = Notifier({"NOTIFY_SOCKET": value})
    threads = [
        threading.Thread(
            target=lambda n=n: [notifier.status(f"thread {n} message {i}")
                                for i in range(50)],
        )
        for n in range(4)
    ]
    for thread in threads:
        thread.start()

    received = [receiver.recv(4096) for _ in range(200)]
    for thread in threads:
        thread.join(timeout=RECEIVE_TIMEOUT)
    notifier.close()

    expected = {f"STATUS=thread {n} message {i}".encode()
                for n in range(4) for i in range(50)}
    assert set(received) == expected
    assert not any(thread.is_alive() for thread in threads)


def test_running_under_systemd_matches_the_journal_stream(tmp_path: Path) -> None:
    with open(tmp_path / "journal", "w") as stream, \
         open(tmp_path / "other", "w") as other:
        info = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}

        assert running_under_systemd(stream, env)
        assert running_under_systemd(stream.fileno(), env)
        assert not running_under_systemd(other, env)
        assert not running_under_systemd(stream, {})
        assert not running_under_systemd(stream, {"JOURNAL_STREAM": "junk"})


def test_running_under_systemd_defaults_to_stderr(tmp_path: Path,
                                                  monkeypatch) -> None:
    with open(tmp_path / "journal", "w") as stream:
        info = os.fstat(stream.fileno())
        monkeypatch.setattr("sys.stderr", stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")

        assert running_under_systemd()
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino + 1}")
        assert not running_under_systemd()


def test_invocation_id() -> None:
    assert invocation_id({"INVOCATION_ID": "8f3c"}) == "8f3c"
    assert invocation_id({"INVOCATION_ID": ""}) is None
    assert invocation_id({}) is None
