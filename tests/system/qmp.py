"""Clients for QEMU's machine protocol (QMP) and its guest agent, over sockets."""

from __future__ import annotations

import base64
import itertools
import json
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The guest agent prefixes its answer to guest-sync-delimited with this byte.
SYNC_DELIMITER = b"\xff"


class VmError(OSError):
    """QEMU or the guest did not answer, or answered with an error."""


class _JsonLines:
    """A socket carrying one JSON object per line, each read bounded in time."""

    def __init__(self, path: Path, timeout: float) -> None:
        self._buffer = b""
        self._socket = _connect(path, timeout)

    def send(self, message: dict[str, Any]) -> None:
        """Send one message."""
        self._socket.sendall(json.dumps(message).encode() + b"\n")

    def receive(self, timeout: float) -> dict[str, Any]:
        """Return the next message, waiting at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            self._fill(deadline)
        line, _, self._buffer = self._buffer.partition(b"\n")
        line = line.strip(SYNC_DELIMITER + b" \r")
        if not line:
            return self.receive(max(0.0, deadline - time.monotonic()))
        return json.loads(line)

    def discard_until_delimiter(self, timeout: float) -> None:
        """Drop everything up to and including the guest agent's 0xFF byte."""
        deadline = time.monotonic() + timeout
        while SYNC_DELIMITER not in self._buffer:
            self._buffer = b""
            self._fill(deadline)
        self._buffer = self._buffer.split(SYNC_DELIMITER, 1)[1]

    def _fill(self, deadline: float) -> None:
        """Read what the socket has, until the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer in time")
        self._socket.settimeout(left)
        try:
            data = self._socket.recv(65536)
        except TimeoutError:
            raise TimeoutError("no answer in time") from None
        if not data:
            raise VmError("QEMU closed the connection")
        self._buffer += data

    def close(self) -> None:
        """Close the socket; safe to call twice."""
        self._socket.close()


def _connect(path: Path, timeout: float) -> socket.socket:
    """Connect to a UNIX socket that QEMU may still be creating."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise VmError(f"QEMU's socket {path} did not appear") from None
            time.sleep(0.1)


class QmpClient:
    """Controls a running QEMU: screendumps, power and events.

    Args:
        path: The QMP UNIX socket (``-qmp unix:PATH,server=on,wait=off``).
        timeout: Seconds to wait for the socket and for each answer.
    """

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._lines = _JsonLines(path, timeout)
        greeting = self._lines.receive(timeout)
        if "QMP" not in greeting:
            raise VmError(f"not a QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run one QMP command and return its result.

        Raises:
            VmError: QEMU answered with an error.
        """
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self._lines.send(message)
        while True:
            answer = self._lines.receive(self.timeout)
            if "event" in answer:
                self.events.append(answer)
                continue
            if "error" in answer:
                raise VmError(f"QMP {command}: {answer['error'].get('desc')}")
            return answer.get("return")

    def screendump(self, path: Path) -> Path:
        """Save what the screen shows now as a PNG file."""
        path.unlink(missing_ok=True)
        self.execute("screendump", filename=str(path), format="png")
        return path

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        self._lines.close()


@dataclass(frozen=True)
class Completed:
    """The outcome of a command run in the guest."""

    command: str
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Completed:
        """Return self, or raise when the command failed."""
        if self.returncode != 0:
            raise VmError(
                f"guest command {self.command!r} exited {self.returncode}: "
                f"{(self.stderr or self.stdout).strip()[-2000:]}"
            )
        return self


class GuestAgent:
    """Runs commands in the guest through qemu-guest-agent.

    The host end of the agent's virtio-serial port is a UNIX socket. The
    connection survives guest reboots; after one, :meth:`wait_ready` waits
    until the new agent answers.

    Args:
        path: The socket of the chardev behind ``org.qemu.guest_agent.0``.
    """

    def __init__(self, path: Path) -> None:
        self._lines = _JsonLines(path, 10.0)
        self._ids = itertools.count(int(time.time()) % 100000 * 1000)

    def wait_ready(self, timeout: float) -> float:
        """Wait until the agent in the guest answers.

        Returns:
            The seconds it took.

        Raises:
            VmError: No agent answered within ``timeout`` seconds.
        """
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self._sync(min(3.0, timeout)):
                return time.monotonic() - started
        raise VmError(f"the guest agent did not answer within {timeout:.0f} s")

    def _sync(self, timeout: float) -> bool:
        """Flush stale answers and check the agent is there."""
        token = next(self._ids)
        self._lines.send({"execute": "guest-sync-delimited",
                          "arguments": {"id": token}})
        deadline = time.monotonic() + timeout
        try:
            self._lines.discard_until_delimiter(timeout)
            while True:
                answer = self._lines.receive(max(0.0, deadline - time.monotonic()))
                if answer.get("return") == token:
                    return True
        except (TimeoutError, json.JSONDecodeError):
            return False

    def _call(self, command: str, timeout: float, **arguments: Any) -> Any:
        """Run one agent command and return its result."""
        self._lines.send({"execute": command, "arguments": arguments})
        answer = self._lines.receive(timeout)
        if "error" in answer:
            raise VmError(f"guest agent {command}: {answer['error'].get('desc')}")
        return answer.get("return")

    def run(self, command: str, timeout: float = 60.0) -> Completed:
        """Run a shell command in the guest as root and wait for it.

        Args:
            command: A /bin/sh command line.
            timeout: Seconds the command may take.

        Returns:
            Its exit code and output.

        Raises:
            VmError: The agent failed, or the command outlived ``timeout``.
        """
        pid = self._call("guest-exec", 10.0, path="/bin/sh",
                         arg=["-c", command], **{"capture-output": True})["pid"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self._call("guest-exec-status", 10.0, pid=pid)
            if status.get("exited"):
                return Completed(command, status.get("exitcode", -1),
                                 _decode(status.get("out-data")),
                                 _decode(status.get("err-data")))
            time.sleep(0.2)
        raise VmError(f"guest command {command!r} still ran after {timeout:.0f} s")

    def send_only(self, command: str) -> None:
        """Start a shell command in the guest without waiting (e.g. reboot)."""
        self._call("guest-exec", 10.0, path="/bin/sh", arg=["-c", command])

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        self._lines.close()


def _decode(data: str | None) -> str:
    """Decode the base64 output the guest agent returns."""
    return base64.b64decode(data).decode(errors="replace") if data else ""
