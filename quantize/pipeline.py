"""`cellar quantize`: check, quantize, measure, gate, register.

Everything happens inside the store's staging directory: the quantized file, the llama.cpp log
and the report are written there, and the model only appears in the store when the gate passes
(or `--force`). A failure, a refusal or Ctrl-C leaves the store as it was.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from cellar.child import python_module
from cellar.convert import llamacpp_tools
from cellar.convert.hf_to_gguf import convert as convert_hf
from cellar.errors import IntegrityError, StoreError
from cellar.fingerprint import artifact_quantization, versions
from cellar.gguf import GGUFError, pooling_type, quantization
from cellar.hashing import tree_size
from cellar.quantize import gate
from cellar.quantize.gguf import quantize_gguf
from cellar.quantize.report import markdown
from cellar.quantize.targets import BITS_PER_WEIGHT, UNQUANTIZED, QuantizeError, Target
from cellar.store import Lineage, Manifest, ModelStore
from cellar.tags import set_tag
from cellar.versions import check_tag

DISK_MARGIN = 1.2
LINEAGE_FIGURES = (
    "source_ppl",
    "result_ppl",
    "ppl_increase",
    "kl_mean",
    "mean_cosine",
    "min_cosine",
    "top5_agreement",
    "eval_tokens",
)
"""The measured figures a quantized model's lineage keeps (those its gate measured)."""
TOOLS = ("cellarlm", "llama-cpp-python")


def method(target: Target, *, converted: bool = False) -> str:
    if target.kind == "bnb":
        return "bitsandbytes"
    return "llama.cpp-convert+quantize" if converted else "llama.cpp-quantize"


def make_bnb(source: Path, dst: Path, target: Target, log: Path) -> None:
    """A bitsandbytes checkpoint written by transformers in a child process."""
    with log.open("wb") as sink:
        done = subprocess.run(
            python_module("cellar.quantize.bnb", "make", str(source), str(dst), target.name),
            stdout=sink,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        last = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise QuantizeError(
            f"bitsandbytes could not quantize {source.name}:\n  " + "\n  ".join(last)
        )


class GateFailed(QuantizeError):
    exit_code = 1  # it ran and the result failed the gate

    """The result lost more quality than allowed; nothing was registered."""


@dataclass
class Request:
    model: str
    target: Target
    name: str
    eval_file: Path
    max_ppl_increase: float | None = None
    min_cosine: float | None = None
    min_top5_agreement: float | None = None
    force: bool = False
    allow_requantize: bool = False
    threads: int = 2
    goldens: list[dict[str, Any]] = field(default_factory=list)
    """Golden prompts: {name, prompt, max_tokens, regex}."""
    tag: str | None = None
    """Tag the new version (e.g. staging) once registered."""

    def judge(self, report: dict[str, Any], embedding: bool) -> gate.Verdict:
        """The gate that fits the model: perplexity, or for an embedding model its vectors."""
        target = self.target
        if embedding:
            return gate.embeddings(
                report,
                _given(self.min_cosine, target.min_cosine),
                _given(self.min_top5_agreement, target.min_top5_agreement),
                target.name,
            )
        return gate.perplexity(
            report, _given(self.max_ppl_increase, target.max_ppl_increase), target.name
        )


def _given(value: float | None, default: float) -> float:
    return default if value is None else value


class Progress(Protocol):
    """What the pipeline reports while it works (the CLI draws it)."""

    def stage(self, text: str) -> None: ...

    def tensors(self, done: int, total: int) -> None: ...


def default_eval_file() -> Path:
    return Path(str(resources.files("cellar.quantize") / "eval_text.txt"))


@dataclass(frozen=True)
class Source:
    manifest: Manifest
    path: Path
    type: str
    """GGUF file type (f16, q4_k_m, ...) or a checkpoint's dtype (float32, ...)."""
    converts: bool = False
    """A checkpoint that llama.cpp's converter turns into a GGUF first."""
    tokenizer_from: Manifest | None = None
    """For a checkpoint going to GGUF: the GGUF it came from, whose tokenizer is carried over."""

    @property
    def lossy(self) -> bool:
        return self.type not in UNQUANTIZED | FLOAT_DTYPES


FLOAT_DTYPES = frozenset({"float32", "bfloat16", "float16"})


def tokenizer_origin(store: ModelStore, manifest: Manifest) -> Manifest | None:
    """The GGUF a checkpoint was made from, through checkpoints only (conversion, merges)."""
    seen = set()
    while manifest.format == "hf" and manifest.lineage and manifest.sha256 not in seen:
        seen.add(manifest.sha256)
        parent = store.find_sha(manifest.lineage.parent_sha256)
        if parent is None:
            return None
        manifest = parent
    return manifest if manifest.format == "gguf" else None


def check_source(store: ModelStore, request: Request) -> Source:
    """The source model and its type; refuses what cannot or should not run."""
    target = request.target
    manifest = store.get(request.model)
    if target.kind == "bnb" and manifest.format != "hf":
        raise QuantizeError(
            f"--to {target.name} needs a Hugging Face checkpoint and {request.model} is a GGUF; "
            f"convert it first (`cellar models convert {request.model} --to hf`)."
        )
    try:
        store.verify(request.model)
    except IntegrityError as exc:
        raise QuantizeError(f"the source is damaged: {exc}") from None
    path = store.file_of(manifest)
    if manifest.format == "hf":
        source_type = artifact_quantization(path, "hf") or "unknown"
        if source_type not in FLOAT_DTYPES:
            raise QuantizeError(
                f"{request.model} is already quantized ({source_type}); quantize its "
                "full-precision parent instead"
            )
        if target.kind == "bnb":
            if (path / "modules.json").is_file():
                raise QuantizeError(
                    f"{request.model} is a sentence-transformers embedding model; bitsandbytes "
                    "targets are for generation models. Quantize it to a GGUF (--to q8_0)."
                )
            return Source(manifest, path, source_type)
        llamacpp_tools.script("convert_hf_to_gguf.py")  # installed, or say how to install it
        return Source(manifest, path, source_type, True, tokenizer_origin(store, manifest))
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
    return Source(manifest, path, source_type)


def embedding_model(path: Path) -> bool:
    """Whether a GGUF pools one vector per input (then it is judged by its vectors)."""
    try:
        return pooling_type(path) is not None
    except GGUFError:
        return False


def check_disk(store: ModelStore, source: Source, target: Target) -> None:
    """Enough free space for the result (estimated from bits per weight), and for the GGUF a
    checkpoint is converted to first, checked up front."""
    if source.converts:  # the checkpoint at its own precision, as a GGUF, then the result
        size = tree_size(source.path)
        bits = {"float32": 32.0}.get(source.type, 16.0)
        needed = size + int(size * BITS_PER_WEIGHT.get(target.name, 16.0) / bits)
    elif target.kind == "bnb":  # embeddings stay in full precision: at most the source's size
        needed = tree_size(source.path)
    else:
        ratio = BITS_PER_WEIGHT.get(target.name, 16.0) / BITS_PER_WEIGHT.get(source.type, 4.5)
        needed = int(source.path.stat().st_size * max(ratio, 0.1))
    needed = int(needed * DISK_MARGIN)
    free = shutil.disk_usage(store.root if store.root.exists() else store.root.parent).free
    if needed > free:
        raise QuantizeError(
            f"not enough disk space in {store.root}: the result needs about "
            f"{needed / 2**20:,.0f} MiB, {free / 2**20:,.0f} MiB are free"
        )


def evaluate(source: Path, result: Path, request: Request, embedding: bool) -> dict[str, Any]:
    """Quality and speed of both, measured in a child process: llama.cpp for GGUF
    (quantize/evaluate.py; quantize/evaluate_embeddings.py for an embedding model),
    transformers for checkpoints (quantize/bnb.py)."""
    if request.target.kind != "gguf":
        command = ["cellar.quantize.bnb", "evaluate"]
    elif embedding:
        command = ["cellar.quantize.evaluate_embeddings"]
    else:
        command = ["cellar.quantize.evaluate"]
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
            python_module(*command, str(ask), str(out)),
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
    gguf = request.target.kind == "gguf"
    try:  # an existing name gets a new version, if it holds the same kind of model
        previous = store.next_of(request.name, "gguf" if gguf else "hf")
        if request.tag is not None:
            check_tag(request.tag)
    except StoreError as exc:
        raise QuantizeError(f"--name {request.name}: {exc}") from None
    source = check_source(store, request)
    check_disk(store, source, request.target)
    report: dict[str, Any] = {}
    converted_as: str | None = None

    def to_gguf(staging: Path, log: Path) -> Path:
        """The checkpoint as a GGUF at its own precision (removed after the build)."""
        nonlocal converted_as
        origin = source.tokenizer_from
        carried = f", tokenizer from {origin.name}" if origin else ""
        progress.stage(f"converting {request.model} to GGUF (llama.cpp's converter{carried})")
        out = staging / "source.gguf"
        converted_as = convert_hf(
            source.path,
            out,
            name=request.model,
            log=log,
            tokenizer_from=store.file_of(origin) if origin else None,
            progress=progress.tensors,
        )
        return out

    def build(path: Path) -> None:
        log = path.parent / "quantize.log"
        reference = to_gguf(path.parent, log) if source.converts else source.path
        try:
            progress.stage(f"quantizing {request.model} ({source.type}) to {request.target.name}")
            if request.target.kind == "gguf":
                quantize_gguf(
                    reference,
                    path,
                    request.target,
                    threads=request.threads,
                    allow_requantize=request.allow_requantize,
                    log=log,
                    progress=progress.tensors,
                )
            else:
                make_bnb(reference, path, request.target, log)
            embedding = path.suffix == ".gguf" and embedding_model(reference)
            progress.stage(
                "measuring cosine similarity, top-5 neighbours and speed"
                if embedding
                else "measuring perplexity, KL divergence, golden prompts and speed"
            )
            report.update(evaluate(reference, path, request, embedding))
        finally:
            if reference != source.path:
                reference.unlink(missing_ok=True)
        verdict = request.judge(report, embedding)
        report.update(
            source_name=request.model,
            source_type=source.type + (f" (as {converted_as} GGUF)" if converted_as else ""),
            target=request.target.name,
            task="embed" if embedding else "generate",
            eval_file=str(request.eval_file),
            gate=verdict.record(forced=not verdict.passed),
        )
        (path.parent / "report.json").write_text(json.dumps(report, indent=1))
        (path.parent / "report.md").write_text(markdown(report))
        if not verdict.passed and not request.force:
            raise GateFailed(
                f"{verdict.failure}; nothing was registered. --force registers it anyway."
            )

    def lineage(_: Path) -> Lineage:
        parameters: dict[str, Any] = {
            "target": request.target.name,
            "ftype": request.target.ftype,
            "threads": request.threads,
            "allow_requantize": request.allow_requantize,
            "lossy": source.lossy,
            "forced": not report["gate"]["passed"],
            **{k: v for k, v in report["gate"].items() if k.startswith(("max_", "min_"))},
        }
        if converted_as is not None:
            origin = source.tokenizer_from
            parameters["converted_as"] = converted_as
            parameters["tokenizer_from"] = (
                {"name": origin.name, "sha256": origin.sha256} if origin else "checkpoint"
            )
        return Lineage(
            parent=request.model,
            parent_sha256=source.manifest.sha256,
            method=method(request.target, converted=converted_as is not None),
            parameters=parameters,
            tools=versions(TOOLS),
            report={key: report[key] for key in LINEAGE_FIGURES if key in report},
            previous=previous.label if previous is not None else None,
        )

    made = store.add(
        request.name,
        f"{request.name}.gguf" if gguf else request.name,
        build,
        fmt="gguf" if gguf else "hf",
        source=f"{method(request.target, converted=source.converts)} {request.model} "
        f"--to {request.target.name}",
        lineage=lineage,
    )
    if request.tag is not None:
        set_tag(store, made.name, str(made.version), request.tag, why="cellar quantize")
    return made, report
