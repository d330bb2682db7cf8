"""The building blocks of config files: strict models, sizes (512MiB) and durations (15m)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


class Strict(BaseModel):
    """Unknown keys are errors; loaded settings do not change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(value: int | str) -> int:
    """Bytes from 123, "512MiB", "8GB"..."""
    if isinstance(value, int):
        return value
    if not isinstance(value, str):  # a request body may hold anything
        raise ValueError(f"not a size: {value!r} (use e.g. 512MiB or 8GB)")
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {value!r} (use e.g. 512MiB or 8GB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_duration(value: int | float | str) -> float:
    """Seconds from 30, "2s", "15m", "1h"; -1 (or "-1") means forever."""
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 15m, 1h, or -1 for never)")
    match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*([smhd]?)\s*", value)
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 15m, 1h, or -1 for never)")
    return float(match.group(1)) * _SECONDS[match.group(2)]


Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
