"""A structural check of a .tflite file, before any runtime parses it.

tflite-runtime 2.14 does not verify the FlatBuffer it is given: a truncated
or damaged model crashes the whole process with a segmentation fault instead
of raising. This module walks the parts of the file that point elsewhere in
it (the model's subgraphs, tensors, operators and weight buffers) and checks
that every one of them lies inside the file. It does not prove the model
valid; it catches the damage that crashes a runtime: a cut-off download or
a file of some other kind renamed to .tflite.
"""

from __future__ import annotations

import logging
import struct

log = logging.getLogger(__name__)

IDENTIFIER = b"TFL3"

# Field numbers in the TFLite schema (schema.fbs).
MODEL_OPERATOR_CODES, MODEL_SUBGRAPHS, MODEL_BUFFERS = 1, 2, 4
SUBGRAPH_TENSORS, SUBGRAPH_INPUTS, SUBGRAPH_OUTPUTS, SUBGRAPH_OPERATORS = 0, 1, 2, 3
TENSOR_SHAPE, TENSOR_NAME = 0, 3
OPERATOR_INPUTS, OPERATOR_OUTPUTS = 1, 2
BUFFER_DATA, BUFFER_OFFSET, BUFFER_SIZE = 0, 1, 2


class DamagedFileError(ValueError):
    """A pointer in the file leads outside it."""


class _Reader:
    """Bounds-checked reads of FlatBuffer primitives."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def _unpack(self, fmt: str, position: int) -> int:
        size = struct.calcsize(fmt)
        if position < 0 or position + size > len(self.data):
            raise DamagedFileError(f"offset {position} is outside the file")
        return struct.unpack_from(fmt, self.data, position)[0]

    def table(self, position: int) -> tuple[int, int, int]:
        """Return (table, vtable, vtable size) of the table at position."""
        vtable = position - self._unpack("<i", position)
        return position, vtable, self._unpack("<H", vtable)

    def field(self, table: tuple[int, int, int], index: int) -> int | None:
        """The position of a field of a table, or None when it is absent."""
        position, vtable, size = table
        slot = 4 + 2 * index
        if slot + 2 > size:
            return None
        offset = self._unpack("<H", vtable + slot)
        return position + offset if offset else None

    def follow(self, position: int) -> int:
        """Follow the unsigned offset stored at position."""
        return position + self._unpack("<I", position)

    def vector(self, position: int, element_size: int) -> tuple[int, int]:
        """Return (first element, length) of the vector referenced at position."""
        start = self.follow(position)
        length = self._unpack("<I", start)
        end = start + 4 + length * element_size
        if end > len(self.data):
            raise DamagedFileError(
                f"a vector of {length} items runs {end - len(self.data)} bytes "
                "past the end of the file"
            )
        return start + 4, length

    def tables(self, table: tuple[int, int, int], index: int) -> list[tuple]:
        """The tables of a vector-of-tables field (empty when absent)."""
        position = self.field(table, index)
        if position is None:
            return []
        first, length = self.vector(position, 4)
        return [self.table(self.follow(first + 4 * i)) for i in range(length)]

    def uint64(self, table: tuple[int, int, int], index: int) -> int:
        """An unsigned 64-bit scalar field, 0 when absent."""
        position = self.field(table, index)
        return 0 if position is None else self._unpack("<Q", position)


def _check_buffer(reader: _Reader, buffer: tuple[int, int, int]) -> None:
    """Check a weight buffer's bytes lie inside the file."""
    data = reader.field(buffer, BUFFER_DATA)
    if data is not None:
        reader.vector(data, 1)
    offset, size = reader.uint64(buffer, BUFFER_OFFSET), reader.uint64(
        buffer, BUFFER_SIZE
    )
    if offset > 1 and offset + size > len(reader.data):
        raise DamagedFileError("a weight buffer ends past the end of the file")


def _check_vectors(reader: _Reader, table: tuple[int, int, int],
                   fields: tuple[int, ...]) -> None:
    """Check the 4-byte-element vectors of some fields lie inside the file."""
    for index in fields:
        position = reader.field(table, index)
        if position is not None:
            reader.vector(position, 4)


def _check_subgraph(reader: _Reader, subgraph: tuple[int, int, int]) -> None:
    """Check a subgraph's tensors and operators lie inside the file."""
    _check_vectors(reader, subgraph, (SUBGRAPH_INPUTS, SUBGRAPH_OUTPUTS))
    for tensor in reader.tables(subgraph, SUBGRAPH_TENSORS):
        _check_vectors(reader, tensor, (TENSOR_SHAPE,))
        name = reader.field(tensor, TENSOR_NAME)
        if name is not None:
            reader.vector(name, 1)
    for operator in reader.tables(subgraph, SUBGRAPH_OPERATORS):
        _check_vectors(reader, operator, (OPERATOR_INPUTS, OPERATOR_OUTPUTS))


def find_damage(data: bytes) -> str | None:
    """Say what is structurally wrong with a .tflite file's bytes.

    Args:
        data: The whole file.

    Returns:
        None when every checked pointer stays inside the file, else a short
        description of the first problem found.
    """
    if len(data) < 8 or data[4:8] != IDENTIFIER:
        return "no TFL3 identifier"
    reader = _Reader(data)
    try:
        model = reader.table(reader.follow(0))
        for position in (reader.field(model, MODEL_OPERATOR_CODES),):
            if position is not None:
                reader.vector(position, 4)
        subgraphs = reader.tables(model, MODEL_SUBGRAPHS)
        if not subgraphs:
            return "the model has no subgraph"
        for subgraph in subgraphs:
            _check_subgraph(reader, subgraph)
        for buffer in reader.tables(model, MODEL_BUFFERS):
            _check_buffer(reader, buffer)
    except DamagedFileError as error:
        return str(error)
    return None
