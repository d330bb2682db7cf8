"""Reading a GGUF file's metadata header quickly (scalars only; arrays are skipped).

The `gguf` package reads whole files, tensor table and 262k-entry vocabularies included (about
10 s for the bundled model); deciding whether a model fits in memory needs a few numbers in
milliseconds.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

from cellar.errors import ToolError

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9

Scalar = int | float | bool | str


class GGUFError(ToolError):
    """Not a readable GGUF header."""


def _read(handle: BinaryIO, fmt: str) -> tuple[object, ...]:
    size = struct.calcsize(fmt)
    data = handle.read(size)
    if len(data) != size:
        raise GGUFError("the file ends inside its metadata header")
    return struct.unpack(fmt, data)


def _remaining(handle: BinaryIO) -> int:
    return os.fstat(handle.fileno()).st_size - handle.tell()


def _string(handle: BinaryIO) -> str:
    (length,) = _read(handle, "<Q")
    assert isinstance(length, int)
    if length > _remaining(handle):
        raise GGUFError("a metadata string runs past the end of the file (corrupt header)")
    return handle.read(length).decode("utf-8", "replace")


def _skip(handle: BinaryIO, kind: int) -> None:
    if kind in _SCALARS:
        handle.seek(struct.calcsize(_SCALARS[kind]), 1)
    elif kind == _STRING:
        (length,) = _read(handle, "<Q")
        assert isinstance(length, int)
        if length > _remaining(handle):
            raise GGUFError("a metadata string runs past the end of the file (corrupt header)")
        handle.seek(length, 1)
    elif kind == _ARRAY:
        inner, count = _read(handle, "<IQ")
        assert isinstance(inner, int) and isinstance(count, int)
        if count > _remaining(handle):
            raise GGUFError("a metadata array runs past the end of the file (corrupt header)")
        if inner in _SCALARS:
            handle.seek(struct.calcsize(_SCALARS[inner]) * count, 1)
        else:
            for _ in range(count):
                _skip(handle, inner)
    else:
        raise GGUFError(f"unknown metadata value type {kind}")


def read_metadata(path: Path) -> tuple[dict[str, Scalar], dict[str, int]]:
    """(scalar metadata, {array key: length}) from the header of a GGUF file."""
    scalars: dict[str, Scalar] = {}
    arrays: dict[str, int] = {}
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise GGUFError(f"{path} is not a GGUF file")
        _version, _tensors, count = _read(handle, "<IQQ")
        assert isinstance(count, int)
        if count > _remaining(handle):
            raise GGUFError(f"{path}: implausible metadata count {count} (corrupt header)")
        for _ in range(count):
            key = _string(handle)
            (kind,) = _read(handle, "<I")
            assert isinstance(kind, int)
            if kind in _SCALARS:
                (value,) = _read(handle, _SCALARS[kind])
                assert isinstance(value, int | float | bool)
                scalars[key] = value
            elif kind == _STRING:
                scalars[key] = _string(handle)
            elif kind == _ARRAY:
                position = handle.tell()
                _inner, length = _read(handle, "<IQ")
                assert isinstance(length, int)
                arrays[key] = length
                handle.seek(position)
                _skip(handle, kind)
            else:
                raise GGUFError(f"{path}: unknown metadata value type {kind} for {key}")
    return scalars, arrays


FILE_TYPES = {
    0: "f32",
    1: "f16",
    2: "q4_0",
    3: "q4_1",
    7: "q8_0",
    8: "q5_0",
    9: "q5_1",
    10: "q2_k",
    11: "q3_k_s",
    12: "q3_k_m",
    13: "q3_k_l",
    14: "q4_k_s",
    15: "q4_k_m",
    16: "q5_k_s",
    17: "q5_k_m",
    18: "q6_k",
    19: "iq2_xxs",
    20: "iq2_xs",
    21: "q2_k_s",
    22: "iq3_xs",
    23: "iq3_xxs",
    24: "iq1_s",
    25: "iq4_nl",
    26: "iq3_s",
    27: "iq3_m",
    28: "iq2_s",
    29: "iq2_m",
    30: "iq4_xs",
    31: "iq1_m",
    32: "bf16",
    36: "tq1_0",
    37: "tq2_0",
    38: "mxfp4_moe",
}
"""llama.cpp's `llama_ftype` values (`general.file_type`): the file's main quantization."""


def quantization(path: Path) -> str | None:
    """The quantization a GGUF declares, e.g. `q4_k_m`; None when it declares none."""
    scalars, _ = read_metadata(path)
    file_type = scalars.get("general.file_type")
    if not isinstance(file_type, int) or isinstance(file_type, bool):
        return None
    return FILE_TYPES.get(file_type, f"ftype-{file_type}")


def pooling_type(path: Path) -> int | None:
    """The pooling an embedding model's GGUF declares (`{arch}.pooling_type`: 1 mean, 2 CLS,
    3 last token...); None for a model that declares none (a generation model)."""
    scalars, _ = read_metadata(path)
    value = scalars.get(f"{scalars.get('general.architecture')}.pooling_type")
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return None
    return value
