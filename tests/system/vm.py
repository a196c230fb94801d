"""Build the VM image, run the system test, or boot a machine to look around.

Usage (from the repository root, as root)::

    python -m tests.system.vm build            # build or refresh the image
    python -m tests.system.vm test [PYTEST ARGS]  # the whole system test
    python -m tests.system.vm boot             # boot and keep it running
    python -m tests.system.vm exec RUN_DIR COMMAND...
    python -m tests.system.vm screendump RUN_DIR FILE.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .image import REPO, ImageError, ensure_image, why_not_buildable
from .machine import VirtualMachine, kvm_requested
from .qmp import GuestAgent, QmpClient, VmError

_START = time.monotonic()


def report(message: str) -> None:
    """Print one timed progress line."""
    print(f"[vm {time.monotonic() - _START:7.1f} s] {message}", flush=True)


def _cmd_build(args: argparse.Namespace) -> int:
    """Build the image, or find it up to date in the cache."""
    image = ensure_image(report)
    report(f"image ready: {image.folder}")
    return 0


def _cmd_test(args: argparse.Namespace) -> int:
    """Run the pytest system test with its output shown live."""
    command = [sys.executable, "-m", "pytest", "-m", "system", "-s", "-v",
               "-p", "no:cacheprovider", str(Path(__file__).with_name("test_vm.py")),
               *args.pytest_args]
    return subprocess.run(command, cwd=REPO, check=False).returncode


def _cmd_boot(args: argparse.Namespace) -> int:
    """Boot a machine and keep it running for a while."""
    image = ensure_image(report)
    run_dir = Path(tempfile.mkdtemp(prefix="pi-classifier-vm-"))
    try:
        with VirtualMachine(image, run_dir, kvm=kvm_requested()) as machine:
            report(f"booted in {machine.wait_booted(180):.1f} s; run folder {run_dir}; "
                   f"web view at {machine.web_url}")
            machine.detach()
            report(f"try: python -m tests.system.vm exec {run_dir} systemctl status "
                   "pi-classifier")
            report(f"kept running for {args.minutes} minutes (Ctrl-C stops it)")
            try:
                time.sleep(args.minutes * 60)
            except KeyboardInterrupt:
                report("stopping")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


def _cmd_exec(args: argparse.Namespace) -> int:
    """Run a command in a booted machine through its guest agent."""
    agent = GuestAgent(Path(args.run_dir) / "qga.sock")
    try:
        agent.wait_ready(10)
        done = agent.run(" ".join(args.command), args.timeout)
    finally:
        agent.close()
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode


def _cmd_screendump(args: argparse.Namespace) -> int:
    """Save the screen of a booted machine as a PNG."""
    qmp = QmpClient(Path(args.run_dir) / "qmp.sock")
    try:
        qmp.screendump(Path(args.file).resolve())
    finally:
        qmp.close()
    report(f"saved {args.file}")
    return 0


def _parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m tests.system.vm",
                                     description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build or refresh the cached image"
                        ).set_defaults(handler=_cmd_build)
    test = commands.add_parser("test", help="run the system test; other "
                               "arguments go to pytest")
    test.set_defaults(handler=_cmd_test)
    boot = commands.add_parser("boot", help="boot a machine and keep it running")
    boot.add_argument("--minutes", type=float, default=30.0)
    boot.set_defaults(handler=_cmd_boot)
    run = commands.add_parser("exec", help="run a command in a booted machine")
    run.add_argument("run_dir")
    run.add_argument("command", nargs="+")
    run.add_argument("--timeout", type=float, default=120.0)
    run.set_defaults(handler=_cmd_exec)
    dump = commands.add_parser("screendump", help="save a booted machine's screen")
    dump.add_argument("run_dir")
    dump.add_argument("file")
    dump.set_defaults(handler=_cmd_screendump)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "test":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.pytest_args = extra
    if args.command in ("build", "boot"):
        reason = why_not_buildable()
        if reason:
            print(f"vm: cannot build or boot the VM: {reason}", file=sys.stderr)
            return 1 if os.environ.get("CI", "").lower() == "true" else 0
    try:
        return args.handler(args)
    except (ImageError, VmError, TimeoutError) as error:
        print(f"vm: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
