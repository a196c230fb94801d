"""Label files: reading them, fitting them to a model, and naming classes."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from pi_classifier.errors import LabelsError

log = logging.getLogger(__name__)

_INDEXED_LINE = re.compile(r"^\s*(\d+)\s*[:\s]\s*(.+?)\s*$")
BACKGROUND = "background"


@dataclass(frozen=True)
class Labels:
    """Class names by model output index.

    Attributes:
        names: The full label text of each class (for example
            "Granny Smith" or "tench, Tinca tinca").
    """

    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    def name(self, index: int) -> str:
        """The full label of a class, or "class N" when there is none."""
        if 0 <= index < len(self.names) and self.names[index]:
            return self.names[index]
        return f"class {index}"


def parse_labels(text: str, source: str = "<labels>") -> Labels:
    """Parse a label file's text.

    Three forms are understood: one label per line (the line number is the
    index), ``N: label`` and ``N label`` (the number is the index; gaps are
    allowed).

    Raises:
        LabelsError: The text holds no labels or repeats an index.
    """
    lines = [line.rstrip("\r") for line in text.splitlines()]
    while lines and not lines[-1].strip():
        lines.pop()
    if not any(line.strip() for line in lines):
        raise LabelsError(f"label file {source} has no labels")
    matches = [_INDEXED_LINE.match(line) for line in lines if line.strip()]
    if all(matches):
        return _indexed_labels(matches, source)
    return Labels(tuple(line.strip() for line in lines))


def _indexed_labels(matches: list[re.Match[str]], source: str) -> Labels:
    """Build Labels from ``N: label`` or ``N label`` lines."""
    by_index: dict[int, str] = {}
    for match in matches:
        index = int(match.group(1))
        if index in by_index:
            raise LabelsError(f"label file {source} gives index {index} twice")
        by_index[index] = match.group(2)
    names = [""] * (max(by_index) + 1)
    for index, name in by_index.items():
        names[index] = name
    return Labels(tuple(names))


def read_labels(path: str | Path) -> Labels:
    """Read a label file.

    Raises:
        LabelsError: The file is missing, unreadable or empty.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabelsError(f"label file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not UTF-8 text"
        raise LabelsError(f"cannot read label file {path}: {reason}") from None
    return parse_labels(text, str(path))


def fit_labels(labels: Labels, classes: int, source: str = "the label file") -> Labels:
    """Match a label list to a model's number of outputs.

    A model with a background class (1001 outputs) and a 1000-line file gets
    a background row added; a 1000-output model with a file that starts
    with a background row loses that row.

    Raises:
        LabelsError: The counts differ in any other way.
    """
    count = len(labels)
    if count == classes:
        return labels
    if count + 1 == classes:
        log.info("model has a background class: adding it before the %d labels",
                 count)
        return Labels((BACKGROUND, *labels.names))
    if count == classes + 1 and labels.names[0].strip().lower() in (
        BACKGROUND, "???", "unknown", ""
    ):
        log.info("model has no background class: dropping the first label")
        return Labels(labels.names[1:])
    raise LabelsError(
        f"{source} has {count} labels but the model has {classes} outputs"
    )


def short_name(label: str) -> str:
    """The text before the first comma: "tench, Tinca tinca" gives "tench"."""
    return label.split(",", 1)[0].strip()


class Namer:
    """Names classes for display, applying aliases.

    An alias maps a full label or its short name, compared without regard
    to case, to a friendlier name ("Granny Smith" -> "apple"). Names are
    cached, so naming the same class every frame costs a dict look-up.
    """

    def __init__(self, aliases: dict[str, str] | None = None) -> None:
        self._aliases = {
            name.casefold(): alias for name, alias in (aliases or {}).items()
        }
        self._cache: dict[str, str] = {}

    def __call__(self, label: str) -> str:
        """Return the name to show for a label."""
        name = self._cache.get(label)
        if name is None:
            name = self._name(label)
            self._cache[label] = name
        return name

    def _name(self, label: str) -> str:
        """Work out the shown name of a label, uncached."""
        short = short_name(label)
        for key in (label, short):
            alias = self._aliases.get(key.casefold())
            if alias is not None:
                return alias
        return short
