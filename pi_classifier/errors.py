"""The one error hierarchy of pi-classifier, with the exit code of each kind."""

from __future__ import annotations


class PiClassifierError(Exception):
    """Base of every error pi-classifier reports to its user.

    The message is one plain sentence meant for the person at the terminal or
    in the journal; ``exit_code`` is what the command line exits with.
    """

    exit_code = 1


class ConfigError(PiClassifierError, ValueError):
    """The configuration file is missing, unreadable or invalid."""

    exit_code = 78  # EX_CONFIG


class UsageError(PiClassifierError, ValueError):
    """The command line was given arguments that do not fit together."""

    exit_code = 64  # EX_USAGE


class RuntimeUnavailableError(PiClassifierError, ImportError):
    """No usable TFLite runtime (or the requested one) is installed."""

    exit_code = 69  # EX_UNAVAILABLE


class DelegateError(PiClassifierError, RuntimeError):
    """A hardware delegate such as the Coral Edge TPU could not be loaded."""

    exit_code = 69


class ModelError(PiClassifierError, ValueError):
    """A model file is missing, corrupt or cannot run."""

    exit_code = 65  # EX_DATAERR


class LabelsError(PiClassifierError, ValueError):
    """A label file is missing, unreadable or does not fit the model."""

    exit_code = 65


class ImageError(PiClassifierError, ValueError):
    """An input image cannot be read or decoded."""

    exit_code = 65


class FetchError(PiClassifierError, OSError):
    """A model download failed; nothing was left at the final path."""

    exit_code = 75  # EX_TEMPFAIL


class SourceError(PiClassifierError, OSError):
    """A frame source (camera, video, images) cannot be opened or read."""

    exit_code = 74  # EX_IOERR


class DisplayError(PiClassifierError, OSError):
    """A display (framebuffer, DRM, window) cannot be opened or written."""

    exit_code = 74


class WorkerError(PiClassifierError, RuntimeError):
    """The inference worker failed too often to keep going."""

    exit_code = 70  # EX_SOFTWARE
