"""The sd_notify protocol: tell systemd the service is ready, reloading or alive."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TextIO

log = logging.getLogger(__name__)

# A datagram to systemd's notify socket is small, but a full receive queue
# would block a blocking send: this bounds how long a send may wait.
SEND_TIMEOUT = 1.0


def _socket_address(value: str) -> bytes | None:
    """Turn $NOTIFY_SOCKET into an AF_UNIX address, or None if unsupported."""
    if value.startswith("@"):
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return os.fsencode(value)
    return None


def _watchdog_seconds(environ: Mapping[str, str]) -> float | None:
    """Read the watchdog interval that systemd set for this process."""
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None

    pid = environ.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        log.debug("the systemd watchdog is meant for process %s, not this one", pid)
        return None

    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a whole number", usec)
        return None

    return value / 1_000_000 if value > 0 else None


def _monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends sd_notify messages to systemd over ``$NOTIFY_SOCKET``.

    When ``NOTIFY_SOCKET`` is not set (the program was not started by systemd
    as a ``Type=notify`` service) every method returns at once and no socket is
    made. A failed send is logged at warning the first time, at debug after
    that, and never raised. All methods may be called from any thread.

    Only AF_UNIX addresses are supported: a path, or ``@name`` for an abstract
    socket. The ``vsock:`` addresses of newer systemd (used to talk to a host
    from a virtual machine) are logged as unsupported and ignored.

    After a reload the service must call ``ready()`` again: systemd keeps the
    unit in the reloading state from ``reloading()`` until the next READY=1.

    Args:
        environ: Where to read NOTIFY_SOCKET and WATCHDOG_USEC/WATCHDOG_PID;
            the process environment by default.
        clock: The monotonic clock that paces ``watchdog()``, in seconds.

    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if environ is None else environ

        self._lock = threading.Lock()
        self._clock = clock
        self._socket: socket.socket | None = None
        self._address: bytes | None = None
        self._warned = False
        self._last_watchdog: float | None = None

        self._watchdog = _watchdog_seconds(env)
        self._open(env.get("NOTIFY_SOCKET", ""))

    def _open(self, value: str) -> None:
        """Make the datagram socket when systemd gave us an address."""
        if not value:
            return

        address = _socket_address(value)
        if address is None:
            log.warning("ignoring NOTIFY_SOCKET=%r: only AF_UNIX paths and "
                        "@abstract names are supported", value)
            return

        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        except OSError as error:
            log.warning("cannot make a socket to notify systemd: %s", error)
            return

        sock.settimeout(SEND_TIMEOUT)
        self._socket, self._address = sock, address

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere (NOTIFY_SOCKET was set and usable)."""
        return self._socket is not None

    def notify(self, *fields: str) -> bool:
        """Send one message made of ``KEY=value`` fields, one per line.

        Args:
            *fields: The assignments, such as ``"READY=1"``.

        Returns:
            True when the message was handed to the socket, False when
            notification is off or the send failed.

        """
        if self._socket is None:
            return False

        message = "\n".join(fields).encode("utf-8")
        with self._lock:
            return self._send(message)

    def _send(self, message: bytes) -> bool:
        """Send one datagram; the caller holds the lock."""
        if self._socket is None or self._address is None:
            return False
        try:
            self._socket.sendto(message, self._address)
        except OSError as error:
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(level, "cannot notify systemd: %s", error)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd that start-up (or a reload) has finished.

        Args:
            status: An optional one-line status shown by ``systemctl status``.

        Returns:
            True when the message was sent.

        """
        fields = ["READY=1"]
        if status is not None:
            fields.append(_status_field(status))
        return self.notify(*fields)

    def reloading(self) -> bool:
        """Tell systemd that the configuration is being reloaded.

        Sends RELOADING=1 with MONOTONIC_USEC, the time of the request on
        CLOCK_MONOTONIC, which systemd 253 and later require. Call ``ready()``
        when the reload is done.

        Returns:
            True when the message was sent.

        """
        if self._socket is None:
            return False
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}")

    def stopping(self) -> bool:
        """Tell systemd that the service is shutting down.

        Returns:
            True when the message was sent.

        """
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        """Set the free-form status line shown by ``systemctl status``.

        Args:
            text: The status; line breaks are turned into spaces.

        Returns:
            True when the message was sent.

        """
        return self.notify(_status_field(text))

    def watchdog_interval(self) -> float | None:
        """Return the watchdog interval systemd set for this process, in seconds.

        Returns:
            ``WATCHDOG_USEC`` in seconds, or None when there is no watchdog or
            ``WATCHDOG_PID`` names another process.

        """
        return self._watchdog

    def watchdog(self) -> bool:
        """Tell systemd the service is alive (WATCHDOG=1), rate-limited.

        Cheap enough to call for every frame: a message goes out on the first
        call and then only when half the watchdog interval has passed since
        the last one sent, which is the pace systemd recommends. Nothing is
        sent when the watchdog is off or meant for another process. Calls more
        than a whole interval apart let systemd time the service out, which is
        the purpose: call it from the loop whose stall should restart us.

        Returns:
            True when a message was sent by this call.

        """
        if self._socket is None or self._watchdog is None:
            return False

        now = self._clock()
        with self._lock:
            last = self._last_watchdog
            if last is not None and now - last < self._watchdog / 2:
                return False
            self._last_watchdog = now
            return self._send(b"WATCHDOG=1")

    def close(self) -> None:
        """Close the socket; later calls do nothing. Safe to call twice."""
        with self._lock:
            sock, self._socket = self._socket, None

        if sock is not None:
            sock.close()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def _status_field(text: str) -> str:
    """Build a STATUS= field, keeping it on one line as the protocol needs."""
    return "STATUS=" + " ".join(text.splitlines())


def invocation_id(environ: Mapping[str, str] | None = None) -> str | None:
    """Return the systemd invocation ID of this run of the service, if any.

    Args:
        environ: The environment to read; the process environment by default.

    Returns:
        ``$INVOCATION_ID``, set by systemd for every process of a unit, or None.

    """
    env = os.environ if environ is None else environ
    return env.get("INVOCATION_ID") or None


def running_under_systemd(
    stream: TextIO | int | None = None, environ: Mapping[str, str] | None = None
) -> bool:
    """Whether a log stream goes straight to the systemd journal.

    systemd sets ``$JOURNAL_STREAM`` to ``device:inode`` of the journal
    connection it gives a service as stdout/stderr. When the stream matches,
    the journal adds its own timestamps and reads ``<N>`` priority prefixes,
    so a program can leave its timestamps out. A service whose output goes
    elsewhere (a file, a pipe to another program) gets False even though
    ``$INVOCATION_ID`` is set, since prefixes would then end up as text.

    Args:
        stream: A file object or descriptor; standard error by default.
        environ: The environment to read; the process environment by default.

    Returns:
        True when the stream is the journal connection systemd set up.

    """
    env = os.environ if environ is None else environ
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False

    target = sys.stderr if stream is None else stream
    try:
        fd = target if isinstance(target, int) else target.fileno()
        info = os.fstat(fd)
    except (OSError, ValueError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))
