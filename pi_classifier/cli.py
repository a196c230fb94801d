"""The ``pi-classifier`` command line: the only module that prints."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pi_classifier import __version__
from pi_classifier.errors import ImageError, PiClassifierError, UsageError
from pi_classifier.logs import debug_enabled, setup_logging

if TYPE_CHECKING:
    from pi_classifier.progress import ProgressBar

log = logging.getLogger(__name__)

PROGRAM = "pi-classifier"
EXIT_INTERRUPTED = 130
EXIT_SOFTWARE = 70


class _Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line and exit code 64."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Raise instead of printing the usage and exiting with 2."""
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _seconds(text: str) -> float:
    """An argument that is a number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be seconds above 0, not {text!r}")
    return value


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by the commands that load a model."""
    parser.add_argument("--config", metavar="FILE",
                        help="config file (default /etc/pi-classifier/config.yaml "
                        "when it exists, else built-in defaults)")
    parser.add_argument("--model", help="known model name or path to a .tflite file")
    parser.add_argument("--labels", help="label file (default: the model's own)")
    parser.add_argument("--runtime",
                        choices=("auto", "litert", "tflite-runtime", "tensorflow"))
    parser.add_argument("--threads", type=int, metavar="N",
                        help="inference threads (0 = all cores)")


def _build_parser() -> argparse.ArgumentParser:
    """Describe every command and option."""
    parser = _Parser(
        prog=PROGRAM, description="Live camera image classifier for the Raspberry Pi."
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (debug)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="log warnings and errors only")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_classify(commands)
    _add_bench(commands)
    _add_run(commands)
    models = commands.add_parser("models", help="list the known models")
    models.set_defaults(handler=_cmd_models)
    fetch = commands.add_parser("fetch-model", help="download a known model")
    fetch.add_argument("name", help="model name (see 'pi-classifier models')")
    fetch.add_argument("--dir", type=Path, help="folder to download into "
                       "(default: the model folder)")
    fetch.set_defaults(handler=_cmd_fetch_model)
    config = commands.add_parser("config", help="check the configuration")
    config_commands = config.add_subparsers(dest="config_command", metavar="COMMAND",
                                            required=True)
    check = config_commands.add_parser("check", help="validate a config file and "
                                       "print the effective configuration")
    check.add_argument("file", help="the YAML file")
    check.set_defaults(handler=_cmd_config_check)
    return parser


def _add_classify(commands: argparse._SubParsersAction) -> None:
    """The ``classify`` command."""
    parser = commands.add_parser("classify", help="classify image files")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    _add_model_options(parser)
    parser.add_argument("--top-k", type=int, metavar="K", help="classes per image")
    parser.add_argument("--threshold", type=float, help="lowest score to show")
    parser.add_argument("--json", action="store_true", help="JSON lines output")
    parser.set_defaults(handler=_cmd_classify)


def _add_bench(commands: argparse._SubParsersAction) -> None:
    """The ``bench`` command."""
    parser = commands.add_parser("bench", help="measure inference speed")
    _add_model_options(parser)
    parser.add_argument("--seconds", type=_seconds, default=5.0,
                        help="how long to measure (default 5)")
    parser.add_argument("--image", help="picture to use (default: a 640x480 frame)")
    parser.add_argument("--json", action="store_true", help="JSON output")
    parser.set_defaults(handler=_cmd_bench)


def _add_run(commands: argparse._SubParsersAction) -> None:
    """The ``run`` command: the live classifier."""
    parser = commands.add_parser("run", help="run the live classifier")
    parser.add_argument("--config", metavar="FILE", help="config file")
    parser.add_argument("--source", help="auto, picamera2, test-pattern, "
                        "v4l2[:DEVICE], video:FILE or images:FOLDER_OR_GLOB")
    parser.add_argument("--display", choices=("auto", "framebuffer", "drm",
                                              "window", "null"))
    parser.add_argument("--model", help="known model name or path to a .tflite file")
    parser.add_argument("--labels", help="label file")
    parser.add_argument("--web", metavar="[HOST:]PORT",
                        help="turn the web view on at this address")
    parser.add_argument("--duration", type=_seconds, metavar="SECONDS",
                        help="stop after this long (for rehearsals and tests)")
    parser.set_defaults(handler=_cmd_run)


def _load_config_with(args: argparse.Namespace) -> object:
    """Load the config file and apply the command-line overrides."""
    from pi_classifier.config import COMMAND_LINE, load_config, with_changes

    config = load_config(args.config)
    changes = {
        key: getattr(args, key)
        for key in ("model", "labels", "runtime", "threads", "top_k", "threshold")
        if getattr(args, key, None) is not None
    }
    return with_changes(config, changes, COMMAND_LINE)


def _progress(label: str) -> ProgressBar:
    """A download progress bar on stderr."""
    from pi_classifier.progress import ProgressBar

    return ProgressBar(label, stream=sys.stderr)


def _classifier_from(config: object) -> object:
    """Find (fetching if needed) the model and labels, and load them."""
    from pi_classifier.classifier import Classifier
    from pi_classifier.models import resolve_labels, resolve_model

    with _progress(config.model) as bar:
        model = resolve_model(config.model, progress=bar)
    with _progress("labels") as bar:
        labels = resolve_labels(config.labels, model, progress=bar)
    return Classifier(model, labels, runtime=config.runtime, threads=config.threads,
                      delegate=config.delegate, crop=config.crop,
                      aliases=config.aliases)


def read_image(path: str) -> object:
    """Read an image file as a BGR picture.

    Raises:
        ImageError: The file is missing or not a readable image.
    """
    import cv2
    import numpy as np

    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise ImageError(f"{path} is a folder, not an image") from None
    except OSError as error:
        raise ImageError(f"cannot read {path}: {error.strerror}") from None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError(f"{path} is not a readable image")
    return image


def _cmd_classify(args: argparse.Namespace) -> int:
    """Classify each image; keep going past bad ones."""
    config = _load_config_with(args)
    classifier = _classifier_from(config)
    failures = 0
    for path in args.images:
        try:
            image = read_image(path)
        except ImageError as error:
            _error(str(error))
            failures += 1
            continue
        results = classifier.classify(image, config.top_k, config.threshold)
        _print_classification(path, results, classifier.timing.invoke_ms, args.json)
    return ImageError.exit_code if failures else 0


def _print_classification(path: str, results: list, invoke_ms: float,
                          as_json: bool) -> None:
    """Print one image's result as text or a JSON line."""
    if as_json:
        record = {
            "image": path,
            "results": [{"index": r.index, "label": r.name, "score": round(r.score, 5)}
                        for r in results],
            "inference_ms": round(invoke_ms, 3),
        }
        print(json.dumps(record), flush=True)
        return
    shown = ", ".join(f"{r.name} {r.score:.2f}" for r in results) or "(nothing above "\
        "the threshold)"
    print(f"{path}: {shown}  [{invoke_ms:.1f} ms]", flush=True)


def _cmd_bench(args: argparse.Namespace) -> int:
    """Measure invoke and full per-frame cost."""
    from pi_classifier.bench import format_report, run_benchmark

    config = _load_config_with(args)
    classifier = _classifier_from(config)
    image = read_image(args.image) if args.image else None
    report = run_benchmark(classifier, seconds=args.seconds, image=image)
    print(json.dumps(report) if args.json else format_report(report), flush=True)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    """List the known models and whether they are cached."""
    from pi_classifier.models import list_models, model_dir

    print(f"model directory: {model_dir()}")
    print(f"{'name':<42} {'input':>9} {'size':>9}  cached")
    for info in list_models():
        size = f"{info.size_bytes / 1e6:.1f} MB" if info.size_bytes else "-"
        width, height = info.input_size
        print(f"{info.name:<42} {f'{width}x{height}':>9} {size:>9}  "
              f"{'yes' if info.cached else 'no'}")
    return 0


def _cmd_fetch_model(args: argparse.Namespace) -> int:
    """Download a known model (and its labels) with checksum checks."""
    from pi_classifier.models import fetch_known

    for path in fetch_known(args.name, args.dir, progress_for=_progress):
        print(path)
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    """Validate a config file and print what it amounts to."""
    from pi_classifier.config import dump_config, load_config

    config = load_config(args.file)
    sys.stdout.write(dump_config(config))
    print(f"{args.file}: OK", file=sys.stderr)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    """Run the live classifier until stopped."""
    from pi_classifier.app import run_from_args

    return run_from_args(args)


def _error(message: str) -> None:
    """Print one error line to stderr."""
    print(f"{PROGRAM}: error: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: The arguments, without the program name; None reads sys.argv.

    Returns:
        The exit code: 0 on success, the error's code otherwise.
    """
    if not debug_enabled():
        # OpenCV's own warnings repeat, less clearly, the errors said here.
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    try:
        args = _build_parser().parse_args(argv)
    except UsageError as error:
        _error(str(error))
        return error.exit_code
    quiet_by_default = args.command != "run"
    setup_logging(-1 if args.quiet or (quiet_by_default and not args.verbose)
                  else max(0, args.verbose - quiet_by_default))
    try:
        return args.handler(args)
    except PiClassifierError as error:
        log.debug("failed", exc_info=True)
        _error(str(error))
        return error.exit_code
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as error:
        if debug_enabled():
            raise
        _error(f"unexpected {type(error).__name__}: {error} "
               "(set PI_CLASSIFIER_DEBUG=1 to see where)")
        return EXIT_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
