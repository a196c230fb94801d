"""Finding a TFLite runtime and making interpreters with it."""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.metadata
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from pi_classifier.errors import DelegateError, ModelError, RuntimeUnavailableError
from pi_classifier.tflite_file import IDENTIFIER, find_damage

log = logging.getLogger(__name__)

#: Runtimes in the order ``auto`` tries them: (module, distribution name).
RUNTIMES: dict[str, tuple[str, str]] = {
    "litert": ("ai_edge_litert.interpreter", "ai-edge-litert"),
    "tflite-runtime": ("tflite_runtime.interpreter", "tflite-runtime"),
    "tensorflow": ("tensorflow.lite", "tensorflow"),
}

EDGETPU_LIBRARY = "libedgetpu.so.1"


@dataclass(frozen=True)
class Runtime:
    """An importable TFLite runtime.

    Attributes:
        name: One of the keys of ``RUNTIMES``.
        version: The installed version of its package.
        module: The module that has ``Interpreter`` and ``load_delegate``.
    """

    name: str
    version: str
    module: ModuleType

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


def _package_version(distribution: str) -> str:
    """Return an installed package's version, or "unknown"."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _check_numpy(name: str, version: str) -> None:
    """Refuse tflite-runtime builds that crash with numpy 2."""
    numpy_major = int(np.__version__.split(".")[0])
    runtime_old = version != "unknown" and tuple(
        int(part) for part in version.split(".")[:2]
    ) < (2, 15)
    if name == "tflite-runtime" and numpy_major >= 2 and runtime_old:
        raise RuntimeUnavailableError(
            f"tflite-runtime {version} needs numpy < 2 but numpy {np.__version__} "
            "is installed: install with pip install 'pi-classifier[tflite-runtime]' "
            "or use runtime: litert"
        )


def _import_runtime(name: str) -> Runtime:
    """Import one named runtime, or raise RuntimeUnavailableError."""
    module_name, distribution = RUNTIMES[name]
    version = _package_version(distribution)
    _check_numpy(name, version)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise RuntimeUnavailableError(
            f"the {name} runtime is not installed ({error}): install it with "
            f"pip install {distribution}"
        ) from None
    return Runtime(name, version, module)


def load_runtime(name: str = "auto") -> Runtime:
    """Import the requested TFLite runtime.

    Args:
        name: ``auto`` (LiteRT, else tflite-runtime, else TensorFlow), or one
            of ``litert``, ``tflite-runtime``, ``tensorflow``.

    Returns:
        The runtime, whose name and version are also logged.

    Raises:
        RuntimeUnavailableError: The runtime (or, for auto, every runtime)
            cannot be imported.
    """
    if name != "auto":
        if name not in RUNTIMES:
            raise RuntimeUnavailableError(
                f"unknown runtime {name!r}: choose auto, {', '.join(RUNTIMES)}"
            )
        runtime = _import_runtime(name)
    else:
        runtime = _first_available()
    log.info("inference runtime: %s", runtime)
    return runtime


def _first_available() -> Runtime:
    """Import the first runtime of ``RUNTIMES`` that works."""
    reasons = []
    for candidate in RUNTIMES:
        try:
            return _import_runtime(candidate)
        except RuntimeUnavailableError as error:
            log.debug("runtime %s unavailable: %s", candidate, error)
            reasons.append(candidate)
    raise RuntimeUnavailableError(
        f"no TFLite runtime is installed (tried {', '.join(reasons)}): install "
        "one with pip install 'pi-classifier[litert]'"
    )


def _interpreter_class(runtime: Runtime) -> Any:
    """Return the runtime's Interpreter class."""
    return runtime.module.Interpreter


def _delegate_error(reason: str) -> DelegateError:
    """The one-sentence explanation of a delegate that cannot be loaded."""
    return DelegateError(
        f"the Coral Edge TPU delegate ({EDGETPU_LIBRARY}) cannot be loaded "
        f"({reason}): install libedgetpu1-std and plug in the Edge TPU, or set "
        "delegate: none"
    )


def _load_delegate(runtime: Runtime) -> Any:
    """Load the Coral Edge TPU delegate, or explain why it cannot be."""
    try:
        ctypes.CDLL(EDGETPU_LIBRARY)
    except OSError:
        # Checked first: the runtimes' Delegate objects raise from __del__
        # when their library is missing, which would print a traceback.
        raise _delegate_error("library not found") from None
    loader = getattr(runtime.module, "load_delegate", None)
    if loader is None:
        loader = runtime.module.experimental.load_delegate
    try:
        return loader(EDGETPU_LIBRARY)
    except (ValueError, OSError, RuntimeError) as error:
        raise _delegate_error(str(error).strip() or "no Edge TPU found") from None


def default_threads() -> int:
    """The number of CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _check_model_file(path: Path) -> None:
    """Reject a missing, empty, non-TFLite or damaged file before loading.

    The runtime is never shown a damaged file: tflite-runtime crashes the
    process on one instead of raising.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"model file {path} does not exist") from None
    except IsADirectoryError:
        raise ModelError(f"model path {path} is a folder, not a file") from None
    except OSError as error:
        raise ModelError(f"cannot read model file {path}: {error.strerror}") from None
    if not data:
        raise ModelError(f"model file {path} is empty")
    if len(data) < 8 or data[4:8] != IDENTIFIER:
        raise ModelError(f"{path} is not a TFLite model (no TFL3 identifier)")
    damage = find_damage(data)
    if damage:
        raise ModelError(f"{path} is damaged or truncated: {damage}")


def _explain_load_failure(path: Path, error: Exception) -> ModelError:
    """Turn an interpreter's load or allocate failure into one sentence."""
    text = str(error)
    if "edgetpu-custom-op" in text:
        return ModelError(
            f"{path.name} is compiled for the Coral Edge TPU: set delegate: edgetpu "
            "(with libedgetpu installed) or use the model without _edgetpu"
        )
    if "unresolved custom op" in text:
        op = text.split("custom op:", 1)[1].split(".")[0].strip()
        return ModelError(
            f"{path.name} uses an operation this runtime does not have ({op})"
        )
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return ModelError(f"{path.name} cannot be loaded: {first_line}")


@contextlib.contextmanager
def native_output_to_log() -> Iterator[None]:
    """Route what the runtime's C++ code prints on stderr into the log.

    LiteRT and tflite-runtime print lines such as "INFO: Created TensorFlow
    Lite XNNPACK delegate for CPU." straight to file descriptor 2, which
    would clutter the command line's output. While the block runs, those
    lines go to a temporary file and are then logged at debug level; any
    other text is passed on to stderr unchanged.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            _relay(capture.read().decode(errors="replace"))


def _relay(text: str) -> None:
    """Log the runtime's informational lines; pass anything else to stderr."""
    for line in text.splitlines():
        if line.startswith("INFO: "):
            log.debug("runtime says: %s", line[6:])
        elif line.strip():
            sys.stderr.write(line + "\n")


def create_interpreter(
    runtime: Runtime,
    model_path: str | os.PathLike[str],
    *,
    threads: int = 0,
    delegate: str = "none",
) -> Any:
    """Create an interpreter for a model, with tensors allocated.

    Args:
        runtime: The runtime from ``load_runtime``.
        model_path: The ``.tflite`` file.
        threads: CPU threads for inference; 0 uses every core.
        delegate: ``none`` or ``edgetpu``.

    Returns:
        The runtime's Interpreter, ready to invoke.

    Raises:
        ModelError: The file is missing, corrupt or cannot run here.
        DelegateError: The Edge TPU delegate cannot be loaded.
    """
    path = Path(model_path)
    _check_model_file(path)
    delegates = [_load_delegate(runtime)] if delegate == "edgetpu" else None
    threads = threads or default_threads()
    try:
        with native_output_to_log():
            interpreter = _interpreter_class(runtime)(
                model_path=str(path), num_threads=threads,
                experimental_delegates=delegates,
            )
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise _explain_load_failure(path, error) from None
    log.info("loaded %s with %d threads%s", path.name, threads,
             " on the Edge TPU" if delegates else "")
    return interpreter
