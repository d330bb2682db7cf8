"""Hugging Face checkpoint -> GGUF with llama.cpp's own converter (`convert_hf_to_gguf.py`,
unpacked by `cellar tools install`), run in a child process whose output goes to a log file.

The GGUF is written at the checkpoint's own precision (f32, bf16 or f16), so nothing is lost
before `llama_model_quantize` makes the target type from it. When the checkpoint came from a
GGUF, the original's tokenizer is carried over (quantize/retokenize.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from cellar.child import python_module
from cellar.convert import llamacpp_tools
from cellar.errors import ConvertError

Progress = Callable[[int, int], None]
_TENSOR_LINE = re.compile(r"-->\s*\w+, shape")
_LOSSLESS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def lossless_type(checkpoint: Path) -> str:
    """The GGUF type that holds the checkpoint's weights exactly."""
    try:
        config = json.loads((checkpoint / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConvertError(f"{checkpoint / 'config.json'}: unreadable: {exc}") from None
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    if dtype not in _LOSSLESS:
        raise ConvertError(f"{checkpoint}: weights of type {dtype!r} cannot be converted")
    return _LOSSLESS[dtype]


def tensor_count(checkpoint: Path) -> int:
    """Tensors in the checkpoint's safetensors files (read from their headers)."""
    from safetensors import safe_open

    total = 0
    for part in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(str(part), framework="numpy") as handle:
            total += len(list(handle.keys()))
    return total


def _lines(what: str, argv: list[str], log: Path) -> Iterator[str]:
    """Run `argv`, appending its output to `log` and yielding it line by line; raises
    ConvertError with the log's last lines when it fails, and kills it on Ctrl-C."""
    with log.open("a", encoding="utf-8") as sink:
        child = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=llamacpp_tools.child_env(),
        )
        assert child.stdout is not None
        try:
            for line in child.stdout:
                sink.write(line)
                yield line
            child.wait()
        except BaseException:
            child.kill()
            child.wait()
            raise
        finally:
            child.stdout.close()
    if child.returncode != 0:
        last = [
            line
            for line in log.read_text(errors="replace").splitlines()
            if line.strip() and not line.startswith("INFO:")
        ][-4:]
        raise ConvertError(
            f"{what} failed (exit code {child.returncode}); the end of its log "
            f"({log}):\n  " + "\n  ".join(last)
        )


def convert(
    checkpoint: Path,
    out: Path,
    *,
    name: str,
    log: Path,
    tokenizer_from: Path | None = None,
    progress: Progress | None = None,
) -> str:
    """Write `out`, a GGUF of `checkpoint` at its own precision; returns that type."""
    script = llamacpp_tools.script("convert_hf_to_gguf.py")
    outtype = lossless_type(checkpoint)
    total = max(tensor_count(checkpoint), 1)
    written = out.with_name(out.name + ".converted") if tokenizer_from else out
    argv = [sys.executable, str(script), str(checkpoint), "--outfile", str(written)]
    argv += ["--outtype", outtype, "--model-name", name]
    done = 0
    for line in _lines("llama.cpp's convert_hf_to_gguf.py", argv, log):
        if _TENSOR_LINE.search(line):
            done += 1
            if progress is not None:
                progress(min(done, total), total)
    if tokenizer_from is not None:
        argv = python_module("cellar.convert.retokenize", str(written), str(tokenizer_from))
        try:
            for _ in _lines("carrying the tokenizer over", [*argv, str(out)], log):
                pass
        finally:
            written.unlink(missing_ok=True)
    return outtype
