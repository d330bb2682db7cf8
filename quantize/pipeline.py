"""`cellar quantize`: check, quantize, measure, gate, register.

Everything happens inside the store's staging directory: the quantized file, the llama.cpp log
and the report are written there, and the model only appears in the store when the gate passes
(or `--force`). A failure, a refusal or Ctrl-C leaves the store as it was.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Protocol

from cellar.errors import IntegrityError
from cellar.gguf import GGUFError, quantization
from cellar.store import Lineage, Manifest, ModelStore
from quantize.gguf import quantize_gguf
from quantize.report import markdown
from quantize.targets import BITS_PER_WEIGHT, UNQUANTIZED, QuantizeError, Target

DISK_MARGIN = 1.2
METHOD = "llama.cpp-quantize"


class GateFailed(QuantizeError):
    """The result lost more quality than allowed; nothing was registered."""


@dataclass
class Request:
    model: str
    target: Target
    name: str
    eval_file: Path
    max_ppl_increase: float | None = None
    force: bool = False
    allow_requantize: bool = False
    threads: int = 2
    goldens: list[dict[str, Any]] = field(default_factory=list)
    """Golden prompts: {name, prompt, max_tokens, regex}."""

    @property
    def limit(self) -> float:
        return (
            self.target.max_ppl_increase if self.max_ppl_increase is None else self.max_ppl_increase
        )


class Progress(Protocol):
    """What the pipeline reports while it works (the CLI draws it)."""

    def stage(self, text: str) -> None: ...

    def tensors(self, done: int, total: int) -> None: ...


def default_eval_file() -> Path:
    return Path(str(resources.files("quantize") / "eval_text.txt"))


def _tools() -> dict[str, str]:
    tools = {}
    for dist in ("cellarlm", "llama-cpp-python"):
        try:
            tools[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return tools


def check_source(store: ModelStore, request: Request) -> tuple[Manifest, Path, str]:
    """The source's manifest, file and quantization; refuses what cannot or should not run."""
    target = request.target
    if target.kind != "gguf":
        raise QuantizeError(
            f"--to {target.name}: bitsandbytes checkpoints are not available yet; GGUF targets "
            "are: f16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0"
        )
    manifest = store.get(request.model)
    if any(m.name == request.name for m in store.list()):
        raise QuantizeError(f"a model is already stored as {request.name!r}; choose another --name")
    if manifest.format != "gguf":
        raise QuantizeError(
            f"{request.model} is a Hugging Face checkpoint; --to {target.name} makes a GGUF for "
            "llama.cpp from a GGUF. Convert it first or pick a model stored as GGUF."
        )
    try:
        store.verify(request.model)
    except IntegrityError as exc:
        raise QuantizeError(f"the source is damaged: {exc}") from None
    path = store.file_of(manifest)
    try:
        source_type = quantization(path) or "unknown"
    except GGUFError as exc:
        raise QuantizeError(f"{path}: not a readable GGUF: {exc}") from None
    if source_type not in UNQUANTIZED and not request.allow_requantize:
        raise QuantizeError(
            f"{request.model} is already quantized ({source_type}); quantizing it again loses "
            "quality twice. Start from an f16 or f32 model, or pass --allow-requantize (the "
            "result is then marked lossy)."
        )
    return manifest, path, source_type


def check_disk(store: ModelStore, source: Path, source_type: str, target: Target) -> None:
    """Enough free space for the result (estimated from bits per weight), checked up front."""
    ratio = BITS_PER_WEIGHT.get(target.name, 16.0) / BITS_PER_WEIGHT.get(source_type, 4.5)
    needed = int(source.stat().st_size * max(ratio, 0.1) * DISK_MARGIN)
    free = shutil.disk_usage(store.root if store.root.exists() else store.root.parent).free
    if needed > free:
        raise QuantizeError(
            f"not enough disk space in {store.root}: the result needs about "
            f"{needed / 2**20:,.0f} MiB, {free / 2**20:,.0f} MiB are free"
        )


def evaluate(source: Path, result: Path, request: Request) -> dict[str, Any]:
    """Quality and speed of both files, measured in a child process (quantize/evaluate.py)."""
    with tempfile.TemporaryDirectory(prefix="cellar-eval-") as work:
        ask, out = Path(work) / "request.json", Path(work) / "report.json"
        ask.write_text(
            json.dumps(
                {
                    "source": str(source),
                    "result": str(result),
                    "text": str(request.eval_file),
                    "threads": request.threads,
                    "goldens": request.goldens,
                }
            )
        )
        done = subprocess.run(
            [sys.executable, "-m", "quantize.evaluate", str(ask), str(out)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-3:]
            raise QuantizeError("measuring the result failed:\n  " + "\n  ".join(last))
        figures: dict[str, Any] = json.loads(out.read_text())
    return figures


def quantize_model(
    store: ModelStore, request: Request, progress: Progress
) -> tuple[Manifest, dict[str, Any]]:
    manifest, source, source_type = check_source(store, request)
    check_disk(store, source, source_type, request.target)
    lossy = source_type not in UNQUANTIZED
    report: dict[str, Any] = {}

    def build(path: Path) -> None:
        progress.stage(f"quantizing {request.model} ({source_type}) to {request.target.name}")
        quantize_gguf(
            source,
            path,
            request.target,
            threads=request.threads,
            allow_requantize=request.allow_requantize,
            log=path.parent / "quantize.log",
            progress=progress.tensors,
        )
        progress.stage("measuring perplexity, KL divergence, golden prompts and speed")
        report.update(evaluate(source, path, request))
        increase = report["result_ppl"] / report["source_ppl"] - 1
        passed = increase <= request.limit
        report.update(
            source_name=request.model,
            source_type=source_type,
            target=request.target.name,
            eval_file=str(request.eval_file),
            ppl_increase=increase,
            gate={"max_ppl_increase": request.limit, "passed": passed, "forced": not passed},
        )
        (path.parent / "report.json").write_text(json.dumps(report, indent=1))
        (path.parent / "report.md").write_text(markdown(report))
        if not passed and not request.force:
            raise GateFailed(
                f"perplexity rose {increase:.2%} ({report['source_ppl']:.2f} -> "
                f"{report['result_ppl']:.2f}), more than the {request.limit:.2%} allowed for "
                f"{request.target.name} (--max-ppl-increase); nothing was registered. "
                "--force registers it anyway."
            )

    def lineage(_: Path) -> Lineage:
        return Lineage(
            parent=request.model,
            parent_sha256=manifest.sha256,
            method=METHOD,
            parameters={
                "target": request.target.name,
                "ftype": request.target.ftype,
                "threads": request.threads,
                "allow_requantize": request.allow_requantize,
                "lossy": lossy,
                "forced": not report["gate"]["passed"],
                "max_ppl_increase": request.limit,
            },
            tools=_tools(),
            report={
                key: report[key]
                for key in ("source_ppl", "result_ppl", "ppl_increase", "kl_mean", "eval_tokens")
            },
        )

    made = store.add(
        request.name,
        f"{request.name}.gguf",
        build,
        fmt="gguf",
        source=f"{METHOD} {request.model} --to {request.target.name}",
        lineage=lineage,
    )
    return made, report
