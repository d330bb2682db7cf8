"""`cellar finetune --precision`: auto computes in bf16 where the hardware has it (LoRA on a CPU
with AVX512-BF16 or AMX), fp32 elsewhere and for QLoRA on a CPU; an explicit choice is kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cellar.finetune.train import Hyper, precision
from cellar.hardware import cpu_computes_bf16

CPUINFO = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 {extra}\n\n"


@pytest.mark.parametrize(
    ("extra", "has"), [("avx512f avx512_bf16", True), ("amx_tile amx_bf16", True), ("", False)]
)
def test_bf16_instructions_are_read_from_the_cpu_flags(
    tmp_path: Path, extra: str, has: bool
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra=extra))
    assert cpu_computes_bf16(cpuinfo) is has
    assert cpu_computes_bf16(tmp_path / "missing") is False


def test_auto_picks_bf16_for_lora_where_the_cpu_has_it() -> None:
    if torch.cuda.is_available():
        pytest.skip("on a GPU, auto follows the GPU")
    assert precision(Hyper(method="lora")) == ("bf16" if cpu_computes_bf16() else "fp32")
    assert precision(Hyper(method="qlora")) == "fp32"  # bitsandbytes' CPU kernels stay fp32
    assert precision(Hyper(method="lora", precision="fp32")) == "fp32"
    assert precision(Hyper(method="qlora", precision="bf16")) == "bf16"
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        precision(Hyper(precision="fp8"))
