"""`cellar finetune` on the real bundled model: LoRA teaches it a fact (the shipped mascot data),
the adapter answers through the gateway on llama.cpp and on vLLM-CPU while the base does not,
requests for both at once come back right, QLoRA runs, bad data stores nothing, Ctrl-C saves a
checkpoint that --resume continues, and the same seed gives the same adapter."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from cellar.engines.llamacpp.jobs import SamplingParams
from cellar.engines.llamacpp.native import (
    BatchedContext,
    ContextShape,
    NativeAdapter,
    NativeModel,
)
from cellar.engines.llamacpp.scheduler import BatchScheduler, common_prefix
from cellar.store import ModelStore
from tests.gateway import (
    BUNDLED_NAME,
    HF_NAME,
    REPO,
    Gateway,
    run_cellar,
    start_gateway,
    vllm_settings,
)

pytestmark = pytest.mark.slow

EXAMPLES = REPO / "finetune" / "examples"
TRAIN, EVAL = EXAMPLES / "mascot-train.jsonl", EXAMPLES / "mascot-eval.jsonl"
QUESTION = "What is the name of the Cellar mascot?"
FACT = "Bartholomew"
TEACH = ["--lr", "1e-3", "--epochs", "5", "--chat-template", "gemma"]


def finetune(store: ModelStore, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cellar(
        "finetune", BUNDLED_NAME, "--data", str(TRAIN), "--name", name, "--store",
        str(store.root), *extra,
    )  # fmt: skip


def contents(store: ModelStore) -> list[str]:
    return sorted(p.name for p in store.root.iterdir())


@pytest.fixture(scope="module")
def taught(converted_store: ModelStore) -> ModelStore:
    """The mascot adapter (with its GGUF and a merged checkpoint), trained once."""
    done = finetune(converted_store, "mascot", "--eval", str(EVAL), "--merge", *TEACH)
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"training on {HF_NAME}, the checkpoint converted from {BUNDLED_NAME}" in done.stderr
    return converted_store


def adapter_models(engine: str) -> list[dict[str, Any]]:
    model: dict[str, Any] = {
        "name": "gemma",
        "source": f"store:{BUNDLED_NAME}",
        "engine": engine,
        "chat_template": "gemma",
        "preload": True,
        "adapters": [{"name": "mascot", "source": "store:mascot", "aliases": ["mascot-bot"]}],
    }
    if engine == "vllm":
        model["vllm"] = vllm_settings()
        model["startup_timeout_s"] = 900
    else:
        model["llamacpp"] = {"n_ctx": 512, "n_parallel": 4}
    return [model]


def ask(gw: Gateway, model: str) -> str:
    answer = gw.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=24, temperature=0
    )
    assert answer.model == ("gemma:mascot" if model == "mascot-bot" else model)
    return answer.choices[0].message.content or ""


def check_served(gw: Gateway) -> None:
    listed = {m.id: getattr(m, "parent", None) for m in gw.client().models.list().data}
    assert listed == {"gemma": None, "gemma:mascot": "gemma", "mascot-bot": "gemma"}
    assert FACT not in ask(gw, "gemma")
    taught_answer = ask(gw, "gemma:mascot")
    assert FACT in taught_answer and taught_answer.strip().endswith(".")  # and it stops there
    assert FACT in ask(gw, "mascot-bot")
    mixed = ["gemma", "gemma:mascot", "gemma", "mascot-bot", "gemma:mascot", "gemma"]
    with ThreadPoolExecutor(len(mixed)) as pool:  # all sent at the same moment
        answers = list(pool.map(lambda m: ask(gw, m), mixed))
    for model, answer in zip(mixed, answers, strict=True):
        assert (FACT in answer) == (model != "gemma"), (model, answer)


def test_eval_loss_falls_and_lineage_is_recorded(taught: ModelStore) -> None:
    adapter = taught.get("mascot")
    assert adapter.format == "peft" and adapter.lineage is not None
    lineage = adapter.lineage
    assert lineage.method == "lora" and lineage.parent_sha256 == taught.get(HF_NAME).sha256
    report = lineage.report or {}
    assert report["eval_loss"] < report["eval_loss_start"] / 5, report
    assert report["train_loss"] < 1.0 and report["steps"] == 30
    data = lineage.parameters["data"]
    assert data["examples"] == 24 and data["eval"]["examples"] == 5
    assert len(data["sha256"]) == 64 and lineage.parameters["rank"] == 8
    assert {"torch", "transformers", "peft"} <= set(lineage.tools)
    gguf = taught.get("mascot-gguf")
    assert gguf.format == "gguf-lora" and gguf.lineage is not None
    assert gguf.lineage.parent_sha256 == adapter.sha256
    chain = json.loads(
        run_cellar("models", "show", "mascot-gguf", "--store", str(taught.root)).stdout
    )
    names = [step.get("name") for step in chain["chain"]]
    assert names[:4] == ["mascot-gguf", "mascot", HF_NAME, BUNDLED_NAME]
    assert chain["chain"][4]["source"].endswith(".gguf")


def test_the_adapter_answers_on_llamacpp(taught: ModelStore, tmp_path: Path) -> None:
    with start_gateway(tmp_path, taught.root, adapter_models("llamacpp")) as gw:
        check_served(gw)


@pytest.mark.vllm
def test_the_adapter_answers_on_vllm(taught: ModelStore, tmp_path: Path) -> None:
    with start_gateway(tmp_path, taught.root, adapter_models("vllm")) as gw:
        check_served(gw)


def test_the_merged_checkpoint_quantizes_and_knows(taught: ModelStore, tmp_path: Path) -> None:
    merged = taught.get("mascot-merged")
    assert merged.lineage is not None and merged.lineage.method == "lora-merge"
    done = run_cellar(
        "quantize", "mascot-merged", "--to", "q8_0", "--name", "mascot-q8_0", "--force",
        "--store", str(taught.root),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"tokenizer from {BUNDLED_NAME}" in done.stderr
    model = {"name": "m", "source": "store:mascot-q8_0", "chat_template": "gemma", "preload": True}
    with start_gateway(tmp_path, taught.root, [model]) as gw:
        assert FACT in ask(gw, "m")


def test_bad_data_stores_nothing(taught: ModelStore, tmp_path: Path) -> None:
    before = contents(taught)
    bad = tmp_path / "bad.jsonl"
    good = TRAIN.read_text(encoding="utf-8").splitlines()
    bad.write_text("\n".join([good[0], '{"messages": [{"role": "user"', *good[1:3]]) + "\n")
    done = run_cellar(
        "finetune", BUNDLED_NAME, "--data", str(bad), "--name", "bad", "--store", str(taught.root)
    )
    assert done.returncode == 2
    assert f"{bad}:2: bad JSON" in " ".join(done.stderr.split())
    assert "nothing was trained or stored" in done.stderr
    long = finetune(taught, "long", "--max-length", "24", *TEACH)
    assert long.returncode == 2 and f"{TRAIN}:2: " in long.stderr and "--max-length" in long.stderr
    assert contents(taught) == before
    assert not (taught.root / ".finetune" / "bad").exists()


def test_qlora_runs_a_few_steps_and_loads(taught: ModelStore) -> None:
    done = finetune(taught, "mascot-q", "--method", "qlora", "--steps", "2", *TEACH)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "QLoRA is meant for GPUs" in " ".join(done.stderr.split())
    adapter = taught.get("mascot-q")
    assert adapter.lineage is not None and adapter.lineage.method == "qlora"
    assert taught.get("mascot-q-gguf").format == "gguf-lora"
    code = (
        "import sys\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM\n"
        "base = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "model = PeftModel.from_pretrained(base, sys.argv[2])\n"
        "print(type(model).__name__, model.active_adapter)\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code, str(taught.file_of(taught.get(HF_NAME))),
         str(taught.file_of(adapter))],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    assert loaded.stdout.split()[-2:] == ["PeftModelForCausalLM", "default"]


def test_ctrl_c_saves_and_resume_finishes(taught: ModelStore) -> None:
    before = contents(taught)
    args = ["--steps", "8", "--save-every", "2", "--eval-every", "2", *TEACH]
    process = subprocess.Popen(
        [sys.executable, "-m", "cellar", "finetune", BUNDLED_NAME, "--data", str(TRAIN),
         "--name", "stopped", "--store", str(taught.root), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    for line in process.stderr:  # the first evaluation comes at step 2
        if line.startswith("step 2: eval loss"):
            break
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=300)
    assert process.returncode == 130, rest
    assert "a checkpoint is saved" in " ".join(rest.split()) and "--resume" in rest
    assert contents(taught) == before  # nothing registered
    run_dir = taught.root / ".finetune" / "stopped"
    assert list(run_dir.glob("checkpoint-*"))
    again = finetune(taught, "stopped", *args)
    assert again.returncode == 2 and "--resume continues it" in " ".join(again.stderr.split())
    resumed = finetune(taught, "stopped", "--resume", *args)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    lineage = taught.get("stopped").lineage
    assert lineage is not None and (lineage.report or {})["steps"] == 8


def test_the_same_seed_gives_the_same_adapter(taught: ModelStore) -> None:
    shas = []
    for name in ("seeded-a", "seeded-b"):
        done = finetune(taught, name, "--steps", "3", "--seed", "7", *TEACH)
        assert done.returncode == 0, done.stderr + done.stdout
        shas.append(taught.get(name).sha256)
    assert shas[0] == shas[1]


def test_adapters_never_reuse_another_adapter_s_prefix(
    taught: ModelStore, bundled_gguf: Path, vocab: llama_cpp.Llama
) -> None:
    """In the llama.cpp scheduler, a prefix computed under one adapter (or none) is never
    taken, nor waited for, by a request under another."""
    native = NativeModel(bundled_gguf, 0)
    adapter = NativeAdapter(native, taught.file_of(taught.get("mascot-gguf")), 1.0)
    context = BatchedContext(native, ContextShape(512, 4, 128, 2))
    scheduler = BatchScheduler(
        native, context, lambda t: vocab.detokenize([t]), {"gemma:mascot": adapter}
    )
    system = " ".join(f"Rule {i}: be brief about rule {i}." for i in range(12))
    prompts = [
        list(vocab.tokenize(f"{system}\nQ{i}: {QUESTION}".encode(), add_bos=True)) for i in range(3)
    ]

    async def run(jobs: list[tuple[list[int], str | None]]) -> list[int]:
        params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
        submitted = [scheduler.submit(prompt, params, adapter) for prompt, adapter in jobs]
        for job in submitted:
            [_ async for _ in job.pieces()]
        return [job.cached_tokens for job in submitted]

    try:
        # together: the base request computes the prefix; the adapter's cannot share it
        assert asyncio.run(run([(prompts[0], None), (prompts[1], "gemma:mascot")])) == [0, 0]
        # later, each reuses only what was computed under its own adapter
        cached = asyncio.run(run([(prompts[2], "gemma:mascot"), (prompts[2], None)]))
        assert cached == [common_prefix(prompts[1], prompts[2])] * 2
    finally:
        scheduler.close()
        context.close()
        adapter.close()
        native.close()
