"""`cellar finetune`: base, data, training, then the adapter into the store in two forms.

1. The base is a checkpoint in the store; a GGUF is converted first (`cellar models convert`),
   or its converted checkpoint is reused.
2. The data is read, checked and tokenized (finetune/data.py) before anything trains.
3. Training runs in `<store>/.finetune/<name>/` (checkpoints; `--resume` continues there).
4. The outputs are registered with their lineage: the PEFT adapter `NAME` (vLLM), its GGUF
   `NAME-gguf` made by llama.cpp's `convert_lora_to_gguf.py` (llama.cpp), and with `--merge` a
   merged checkpoint `NAME-merged` (which `cellar quantize` turns into a GGUF). When the names
   exist (a weekly retrain), each gets a new version whose lineage names the one it follows,
   optionally tagged (`--tag staging`); the run's checkpoints are then dropped, so the next
   retrain under the name starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellar.chat import ChatTemplate
from cellar.convert import llamacpp_tools
from cellar.convert.gguf_to_hf import convert_to_hf
from cellar.errors import IntegrityError, StoreError, ToolError
from cellar.finetune.data import DataError, Encoded, Encoder, Example, encode_all, read_examples
from cellar.finetune.train import PRECISIONS, Hyper, Outcome, Progress, train
from cellar.fingerprint import versions
from cellar.hashing import sha256_file
from cellar.store import PEFT_CONFIG, Format, Lineage, Manifest, ModelStore
from cellar.tags import set_tag
from cellar.versions import check_tag

RUNS = ".finetune"
RUN_FILE = "run.json"
HOLD_OUT = 0.1
"""Share of the examples held out for evaluation when no --eval file is given (at least 1,
when there are 5 examples or more)."""
TOOLS = ("cellarlm", "torch", "transformers", "peft", "bitsandbytes", "llama-cpp-python")
_NOT_WEIGHTS = {"config.json", "model.safetensors.index.json"}


class FinetuneError(ToolError):
    """A fine-tune that cannot start or did not finish; the message says why."""


@dataclass
class Request:
    base: str
    data: Path
    name: str
    hyper: Hyper
    template: str | None
    """Chat template text (the server's for this model), or None for completion data only."""
    eval_data: Path | None = None
    resume: bool = False
    restart: bool = False
    merge: bool = False
    threads: int | None = None
    tag: str | None = None
    """Tag the new versions (e.g. staging) once all are registered."""

    def outputs(self) -> dict[str, Format]:
        """The names this run registers, and the kind of model each is."""
        made: dict[str, Format] = {self.name: "peft", f"{self.name}-gguf": "gguf-lora"}
        if self.merge:
            made[f"{self.name}-merged"] = "hf"
        return made


@dataclass
class Result:
    outcome: Outcome
    run_dir: Path
    base: Manifest
    registered: list[Manifest] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def resolve_base(store: ModelStore, name: str, say: Callable[[str], None]) -> Manifest:
    """The checkpoint to train on: `name` itself, or the checkpoint converted from that GGUF
    (made now, and said so, when there is none)."""
    manifest = store.get(name)
    if manifest.format == "hf":
        return manifest
    if manifest.format != "gguf":
        raise FinetuneError(f"{name} is a {manifest.format} adapter, not a base model")
    for child in store.children(manifest.sha256):
        if child.format == "hf" and child.lineage and child.lineage.method == "gguf-to-hf":
            say(f"training on {child.name}, the checkpoint converted from {name}")
            return child
    hf_name = f"{manifest.name}-hf"
    say(f"{name} is a GGUF: converting it to a checkpoint first ({hf_name})")
    return convert_to_hf(store, name, hf_name, say)


def _split(examples: list[Any], seed: int) -> tuple[list[Any], list[Any]]:
    if len(examples) < 5:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = max(1, round(len(examples) * HOLD_OUT))
    chosen = set(order[:held])
    kept = [e for i, e in enumerate(examples) if i not in chosen]
    return kept, [e for i, e in enumerate(examples) if i in chosen]


def prepare_data(
    request: Request, base_dir: Path, examples: list[Example], held: list[Example]
) -> tuple[list[Encoded], list[Encoded], int, dict[str, Any]]:
    """Tokenized training and evaluation sets, the pad id, and what describes the data."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    template = None
    if request.template is not None:
        template = ChatTemplate(
            request.template,
            bos_token=tokenizer.bos_token or "",
            eos_token=tokenizer.eos_token or "",
        )
    encoder = Encoder(
        lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"]),
        template,
        bos=tokenizer.bos_token_id,
        eos=tokenizer.eos_token_id,
    )
    encoded = encode_all(encoder, examples, request.data, request.hyper.max_length)
    if request.eval_data is not None:
        evals = encode_all(encoder, held, request.eval_data, request.hyper.max_length)
        trains, split = encoded, "file"
    else:
        trains, evals = _split(encoded, request.hyper.seed)
        split = f"held out {len(evals)} of {len(encoded)}" if evals else "none (under 5 examples)"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    described = {
        "file": str(request.data),
        "sha256": sha256_file(request.data),
        "examples": len(trains),
        "trained_tokens": sum(e.trained_tokens for e in trains),
        "eval": {
            "file": str(request.eval_data) if request.eval_data else None,
            "sha256": sha256_file(request.eval_data) if request.eval_data else None,
            "examples": len(evals),
            "split": split,
        },
        "chat_template_sha256": (
            hashlib.sha256(request.template.encode()).hexdigest() if request.template else None
        ),
    }
    return trains, evals, pad, described


def _run_dir(store: ModelStore, request: Request, fingerprint: dict[str, Any]) -> Path:
    """The run's directory: new, or the stopped run `--resume` continues (same base, data and
    hyperparameters, or it is refused)."""
    run_dir = store.root / RUNS / request.name
    saved = run_dir / RUN_FILE
    if request.restart and run_dir.exists():
        shutil.rmtree(run_dir)
    if request.resume:
        if not saved.is_file() or not any(run_dir.glob("checkpoint-*")):
            raise FinetuneError(f"there is no stopped run named {request.name} to resume")
        before = json.loads(saved.read_text())
        if before != fingerprint:
            changed = sorted(k for k in fingerprint if before.get(k) != fingerprint[k])
            raise FinetuneError(
                f"run {request.name} was started with a different {', '.join(changed)}; "
                "--restart discards it"
            )
        return run_dir
    if run_dir.exists() and any(run_dir.glob("checkpoint-*")):
        raise FinetuneError(
            f"a stopped run named {request.name} has checkpoints in {run_dir}: --resume "
            "continues it, --restart discards it"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(fingerprint, indent=1))
    return run_dir


def save_adapter(model: Any, out: Path) -> None:
    """The PEFT adapter, byte for byte the same for the same seed and data: peft writes
    `target_modules` from a set, in an order that changes from process to process."""
    model.save_pretrained(str(out))
    path = out / PEFT_CONFIG
    config = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def lora_to_gguf(adapter: Path, base: Path, out: Path, log: Path) -> None:
    """llama.cpp's convert_lora_to_gguf.py, offline, in a child process (output to `log`)."""
    script = llamacpp_tools.script("convert_lora_to_gguf.py")
    argv = [sys.executable, str(script), str(adapter), "--base", str(base)]
    argv += ["--outfile", str(out), "--outtype", "f32"]
    with log.open("ab") as sink:
        done = subprocess.run(
            argv, stdout=sink, stderr=subprocess.STDOUT, env=llamacpp_tools.child_env(), check=False
        )
    if done.returncode != 0:
        last = log.read_text(errors="replace").strip().splitlines()[-4:]
        raise FinetuneError(
            f"convert_lora_to_gguf.py failed (exit code {done.returncode}); the end of its log "
            f"({log}):\n  " + "\n  ".join(last)
        )


def merge(base: Path, adapter: Path, out: Path) -> None:
    """The adapter folded into a full-precision copy of the base, with the base's tokenizer."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype="float32")
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(out))
    for file in base.iterdir():
        weights = file.suffix in (".safetensors", ".bin") or file.name in _NOT_WEIGHTS
        if file.is_file() and not weights:
            shutil.copy2(file, out / file.name)


def run(
    store: ModelStore, request: Request, progress: Progress, say: Callable[[str], None]
) -> Result:
    """Check, train, register. DataError / FinetuneError / StoreError say why it cannot run."""
    try:  # a name already used for another kind of model is refused before any work
        previous = {n: store.next_of(n, fmt) for n, fmt in request.outputs().items()}
        if request.tag is not None:
            check_tag(request.tag)
    except StoreError as exc:
        raise FinetuneError(f"--name {request.name}: {exc}") from None
    if request.hyper.method not in ("lora", "qlora"):
        raise FinetuneError(f"unknown method {request.hyper.method!r}; choose lora or qlora")
    if request.hyper.precision not in PRECISIONS:
        raise FinetuneError(
            f"unknown precision {request.hyper.precision!r}; choose {', '.join(PRECISIONS)}"
        )
    llamacpp_tools.script("convert_lora_to_gguf.py")  # installed, or say how to install it
    examples = read_examples(request.data)  # bad data stops everything before any work
    held = read_examples(request.eval_data) if request.eval_data else []
    if request.template is None and any(e.messages for e in [*examples, *held]):
        raise DataError(
            f"{request.data}: chat examples need the model's chat template: the config has no "
            f"deployment of {request.base} with one and the model carries none; pass "
            "--chat-template (a built-in name such as gemma, a .jinja file, or the text)"
        )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI draws its own
    base = resolve_base(store, request.base, say)
    try:
        store.verify(base.name)
    except IntegrityError as exc:
        raise FinetuneError(f"the base is damaged: {exc}") from None
    base_dir = store.file_of(base)
    trains, evals, pad, data = prepare_data(request, base_dir, examples, held)
    say(
        f"{data['examples']} training examples ({data['trained_tokens']} tokens learned), "
        f"{len(evals)} for evaluation ({data['eval']['split']})"
    )
    fingerprint = {
        "base_sha256": base.sha256,
        "data": data,
        "hyperparameters": request.hyper.as_dict(),
    }
    run_dir = _run_dir(store, request, fingerprint)
    if request.threads:
        import torch

        torch.set_num_threads(request.threads)
    started = time.monotonic()
    model, outcome = train(
        base_dir,
        run_dir,
        trains,
        evals,
        request.hyper,
        pad=pad,
        resume=request.resume,
        progress=progress,
    )
    result = Result(outcome, run_dir, base, seconds=time.monotonic() - started)
    if outcome.stopped:
        return result
    figures = {
        "steps": outcome.steps,
        "train_loss": outcome.train_loss,
        "eval_loss_start": outcome.first_eval_loss,
        "eval_loss": outcome.eval_loss,
        "eval_history": outcome.eval_history,
        "seconds": round(result.seconds, 1),
        "precision": outcome.precision,
    }
    parameters = {**request.hyper.as_dict(), "data": data}

    def follows(name: str) -> str | None:
        prior = previous[name]
        return prior.label if prior is not None else None

    adapter = store.add(
        request.name,
        request.name,
        lambda out: save_adapter(model, out),
        fmt="peft",
        source=f"finetune {request.hyper.method} {base.name} --data {request.data.name}",
        lineage=Lineage(
            parent=base.name,
            parent_sha256=base.sha256,
            method=request.hyper.method,
            parameters=parameters,
            tools=versions(TOOLS),
            report=figures,
            previous=follows(request.name),
        ),
    )
    result.registered.append(adapter)
    adapter_dir = store.file_of(adapter)
    result.registered.append(
        store.add(
            f"{request.name}-gguf",
            f"{request.name}.gguf",
            lambda out: lora_to_gguf(adapter_dir, base_dir, out, run_dir / "convert.log"),
            fmt="gguf-lora",
            source=f"convert_lora_to_gguf {adapter.name}",
            lineage=Lineage(
                parent=adapter.name,
                parent_sha256=adapter.sha256,
                method="lora-to-gguf",
                parameters={"outtype": "f32", "base": base.name},
                tools=versions(TOOLS),
                previous=follows(f"{request.name}-gguf"),
            ),
        )
    )
    if request.merge:
        result.registered.append(
            store.add(
                f"{request.name}-merged",
                "hf",
                lambda out: merge(base_dir, adapter_dir, out),
                fmt="hf",
                source=f"merge {adapter.name} into {base.name}",
                lineage=Lineage(
                    parent=base.name,
                    parent_sha256=base.sha256,
                    method="lora-merge",
                    parameters={"adapter": adapter.label, "adapter_sha256": adapter.sha256},
                    tools=versions(TOOLS),
                    previous=follows(f"{request.name}-merged"),
                ),
            )
        )
    if request.tag is not None:
        for made in result.registered:
            set_tag(store, made.name, str(made.version), request.tag, why="cellar finetune")
    for checkpoint in run_dir.glob("checkpoint-*"):  # registered: nothing left to resume
        shutil.rmtree(checkpoint)
    return result
