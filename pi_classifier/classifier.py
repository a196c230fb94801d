"""The classifier: a thin wrapper around one TFLite interpreter."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pi_classifier.errors import ModelError
from pi_classifier.labels import Labels, Namer, fit_labels, read_labels
from pi_classifier.preprocess import InputWriter
from pi_classifier.runtime import (
    Runtime,
    create_interpreter,
    default_threads,
    load_runtime,
)
from pi_classifier.scores import (
    dequantize,
    quantized_range_is_probability,
    rank,
    to_probabilities,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Classification:
    """One ranked class.

    Attributes:
        index: The model's output index.
        label: The full label text.
        name: The name to show (short name or alias).
        score: The probability, 0 to 1.
    """

    index: int
    label: str
    name: str
    score: float


@dataclass(frozen=True)
class Timing:
    """Milliseconds spent in each step of the last classification."""

    preprocess_ms: float = 0.0
    invoke_ms: float = 0.0
    postprocess_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        """The whole per-frame cost."""
        return self.preprocess_ms + self.invoke_ms + self.postprocess_ms


class Classifier:
    """Classifies pictures with a TFLite image-classification model.

    Args:
        model_path: The ``.tflite`` file.
        labels: The label file, or already-read Labels.
        runtime: A runtime name (``auto``, ``litert``, ...) or a Runtime.
        threads: CPU threads for inference; 0 uses every core.
        delegate: ``none`` or ``edgetpu``.
        crop: ``center`` or ``none``.
        aliases: Friendlier names for classes.

    Raises:
        ModelError: The model cannot be loaded or is not a classifier.
        LabelsError: The labels do not fit the model.
        RuntimeUnavailableError: No usable runtime is installed.
    """

    def __init__(
        self,
        model_path: str | Path,
        labels: str | Path | Labels,
        *,
        runtime: str | Runtime = "auto",
        threads: int = 0,
        delegate: str = "none",
        crop: str = "center",
        aliases: dict[str, str] | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.runtime = load_runtime(runtime) if isinstance(runtime, str) else runtime
        self.threads = threads or default_threads()
        self._interpreter = create_interpreter(
            self.runtime, self.model_path, threads=self.threads, delegate=delegate
        )
        input_detail, output_detail = self._check_tensors()
        self._input_index = input_detail["index"]
        self._output_index = output_detail["index"]
        self._output_quantization = output_detail["quantization"]
        self._output_is_probability = quantized_range_is_probability(
            *output_detail["quantization"], output_detail["dtype"]
        )
        height, width = (int(n) for n in input_detail["shape"][1:3])
        self.input_size = (width, height)
        self._writer = InputWriter(width, height, input_detail["dtype"],
                                   input_detail["quantization"], crop)
        classes = int(np.prod(output_detail["shape"]))
        if not isinstance(labels, Labels):
            labels = fit_labels(read_labels(labels), classes, str(labels))
        else:
            labels = fit_labels(labels, classes)
        self.labels = labels
        self.namer = Namer(aliases)
        self.timing = Timing()

    def _check_tensors(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Check the model has one picture input and one score output."""
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        name = self.model_path.name
        if len(inputs) != 1 or len(inputs[0]["shape"]) != 4 or inputs[0]["shape"][
            3
        ] != 3:
            raise ModelError(f"{name} is not an image classifier: it needs one "
                             "input of shape [1, height, width, 3]")
        if len(outputs) < 1 or np.prod(outputs[0]["shape"]) < 2:
            raise ModelError(f"{name} is not an image classifier: it has no "
                             "score output")
        return inputs[0], outputs[0]

    def set_aliases(self, aliases: dict[str, str] | None) -> None:
        """Replace the aliases used to name classes."""
        self.namer = Namer(aliases)

    def probabilities(self, image: np.ndarray, order: str = "bgr") -> np.ndarray:
        """Run the model on one picture and return a score per class.

        Args:
            image: An 8-bit, 3-channel picture of any size.
            order: ``bgr`` (OpenCV) or ``rgb``.

        Raises:
            ModelError: The interpreter failed to run the model.
        """
        started = time.perf_counter()
        tensor = self._interpreter.tensor(self._input_index)()
        self._writer.write(image, tensor, order)
        del tensor
        prepared = time.perf_counter()
        try:
            self._interpreter.invoke()
        except (RuntimeError, ValueError) as error:
            reason = (str(error).strip() or type(error).__name__).splitlines()[0]
            raise ModelError(
                f"{self.model_path.name} failed to run: {reason}"
            ) from None
        invoked = time.perf_counter()
        raw = self._interpreter.get_tensor(self._output_index).reshape(-1)
        probabilities = to_probabilities(
            dequantize(raw, *self._output_quantization), self._output_is_probability
        )
        self.timing = Timing((prepared - started) * 1000, (invoked - prepared) * 1000,
                             (time.perf_counter() - invoked) * 1000)
        return probabilities

    def name_classes(self, ranked: list[tuple[int, float]]) -> list[Classification]:
        """Attach labels and shown names to ranked (index, score) pairs."""
        return [
            Classification(index, self.labels.name(index),
                           self.namer(self.labels.name(index)), score)
            for index, score in ranked
        ]

    def classify(
        self,
        image: np.ndarray,
        top_k: int = 3,
        threshold: float = 0.0,
        order: str = "bgr",
    ) -> list[Classification]:
        """Classify one picture.

        Args:
            image: An 8-bit, 3-channel picture of any size.
            top_k: How many classes to return at most.
            threshold: The lowest score to return.
            order: ``bgr`` (OpenCV) or ``rgb``.

        Returns:
            The best classes, best first.
        """
        probabilities = self.probabilities(image, order)
        started = time.perf_counter()
        result = self.name_classes(rank(probabilities, top_k, threshold))
        extra = (time.perf_counter() - started) * 1000
        self.timing = Timing(self.timing.preprocess_ms, self.timing.invoke_ms,
                             self.timing.postprocess_ms + extra)
        return result

    def invoke_only(self) -> float:
        """Run the interpreter on whatever input it holds; return milliseconds."""
        started = time.perf_counter()
        self._interpreter.invoke()
        return (time.perf_counter() - started) * 1000
