"""`cellar quantize` on the real bundled model: f16 from it, then Q8_0 and Q4_K_M from the f16;
quality within bounds, sizes as measured in DESIGN.md, each served through the gateway, the
gate, the lineage chain, and the refusals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from cellar.gguf import read_metadata
from cellar.store import ModelStore
from tests.gateway import BUNDLED_NAME, HF_NAME, run_cellar, start_gateway

pytestmark = pytest.mark.slow

F16, Q8, Q4 = "gemma-f16", "gemma-q8_0", "gemma-q4_k_m"
# DESIGN.md: f16 536 MB -> Q8_0 292 MB, Q4_K_M 253 MB
EXPECTED_RATIO = {Q8: 292 / 536, Q4: 253 / 536}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, bundled_gguf: Path) -> ModelStore:
    root = tmp_path_factory.mktemp("qstore")
    store = ModelStore(root)
    store.import_file(bundled_gguf, BUNDLED_NAME)
    config = root.parent / "golden.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "store": {"path": str(root)},
                "models": [
                    {
                        "name": "g",
                        "source": f"store:{F16}",
                        "canary": [
                            {
                                "name": "country",
                                "prompt": "The capital of France is",
                                "max_tokens": 8,
                                "expect_regex": "(?i)france|paris|capital",
                            }
                        ],
                    }
                ],
            }
        )
    )
    steps = [
        (BUNDLED_NAME, "f16", F16, ["--allow-requantize"]),
        (F16, "q8_0", Q8, ["--config", str(config)]),
        (F16, "q4_k_m", Q4, []),
    ]
    for source, to, name, extra in steps:
        done = run_cellar(
            "quantize", source, "--to", to, "--name", name, "--store", str(root), *extra
        )
        assert done.returncode == 0, done.stderr + done.stdout
        assert f"registered {name}" in done.stdout
    return store


def report(store: ModelStore, name: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((store.root / name / "report.json").read_text())
    return data


def test_quality_and_size(made: ModelStore) -> None:
    f16 = made.get(F16)
    assert f16.lineage is not None and f16.lineage.parameters["lossy"] is True
    for name, ppl_bound in ((Q8, 0.02), (Q4, 0.10)):
        manifest = made.get(name)
        assert manifest.lineage is not None and manifest.lineage.report is not None
        figures = manifest.lineage.report
        assert manifest.lineage.parent_sha256 == f16.sha256
        assert manifest.lineage.parameters["lossy"] is False
        assert abs(figures["result_ppl"] / figures["source_ppl"] - 1) <= ppl_bound
        assert 0 <= figures["kl_mean"] < 0.5
        ratio = manifest.size / f16.size
        assert abs(ratio / EXPECTED_RATIO[name] - 1) <= 0.10, (name, ratio)


def test_report_beside_the_model(made: ModelStore) -> None:
    q8 = report(made, Q8)
    assert q8["target"] == "q8_0" and q8["gate"] == {
        "max_ppl_increase": 0.02,
        "passed": True,
        "forced": False,
    }
    for role in ("source", "result"):
        figures = q8[role]
        assert isinstance(figures, dict)
        assert figures["decode_tps"] > 0 and figures["prompt_tps"] > 0
        assert figures["ram_at_load_bytes"] > 50 * 2**20
        assert [g["name"] for g in figures["golden"]] == ["country"]
    text = (made.root / Q8 / "report.md").read_text()
    assert "| perplexity |" in text and "golden: country" in text
    assert "q8_0" in (made.root / Q8 / "quantize.log").read_text().lower()


def test_show_prints_the_chain(made: ModelStore) -> None:
    done = run_cellar("models", "show", Q4, "--store", str(made.root))
    chain = json.loads(done.stdout)["chain"]
    assert [step.get("name") for step in chain[:3]] == [Q4, F16, BUNDLED_NAME]
    assert [step.get("made_by") for step in chain[:3]] == [
        "llama.cpp-quantize",
        "llama.cpp-quantize",
        "import",
    ]
    assert chain[3]["source"].endswith(".gguf")


def test_each_result_is_served(made: ModelStore, tmp_path: Path) -> None:
    models = [
        {
            "name": name,
            "source": f"store:{name}",
            "chat_template": "gemma",
            "preload": True,
            "llamacpp": {"n_ctx": 512, "n_parallel": 1},
        }
        for name in (F16, Q8, Q4)
    ]
    with start_gateway(tmp_path, made.root, models) as gw:
        for name in (F16, Q8, Q4):
            answer = gw.client().completions.create(model=name, prompt="Hello", max_tokens=4)
            assert answer.usage is not None and answer.usage.completion_tokens == 4


def test_the_gate_registers_nothing(made: ModelStore) -> None:
    before = sorted(p.name for p in made.root.iterdir())
    done = run_cellar(
        "quantize",
        F16,
        "--to",
        "q4_0",
        "--name",
        "gated",
        "--store",
        str(made.root),
        "--max-ppl-increase",
        "0.0001%",
    )
    assert done.returncode == 1
    message = " ".join(done.stderr.split())
    assert "perplexity rose" in message and "nothing was registered" in message
    assert sorted(p.name for p in made.root.iterdir()) == before


@pytest.mark.parametrize("stage", ["quantizing", "measuring"])
def test_ctrl_c_leaves_nothing(made: ModelStore, stage: str) -> None:
    before = sorted(p.name for p in made.root.iterdir())
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cellar",
            "quantize",
            F16,
            "--to",
            "q8_0",
            "--name",
            "stopped",
            "--store",
            str(made.root),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    seen = []
    for line in process.stderr:  # the stage lines come as the work starts
        seen.append(line)
        if line.startswith(stage):
            break
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 130, "".join(seen) + rest
    assert "nothing was registered" in rest
    assert sorted(p.name for p in made.root.iterdir()) == before  # no model, no staging


def test_refusals(made: ModelStore, tmp_path: Path) -> None:
    root = str(made.root)
    cases = [
        (("quantize", F16, "--to", "q3_fancy"), "unknown target"),
        (("quantize", BUNDLED_NAME, "--to", "q8_0"), "already quantized"),
        (("quantize", F16, "--to", "bnb-nf4"), "needs a Hugging Face checkpoint"),
        (("quantize", "nobody", "--to", "q8_0"), "nobody"),
        (("quantize", F16, "--to", "bnb-nf4", "--name", Q8), "stored as a gguf model"),
        (("quantize", F16, "--to", "q8_0", "--tag", "latest"), "invalid tag"),
    ]
    for args, why in cases:
        done = run_cellar(*args, "--store", root, timeout=300)
        assert done.returncode == 2, (args, done.stderr)
        assert why in " ".join(done.stderr.split()), (args, done.stderr)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes((made.root / Q8 / f"{Q8}.gguf").read_bytes()[:4096])
    other = ModelStore(tmp_path / "store")
    other.import_file(broken, "broken")
    done = run_cellar(
        "quantize",
        "broken",
        "--to",
        "q4_0",
        "--allow-requantize",
        "--store",
        str(other.root),
        timeout=300,
    )
    assert done.returncode == 2 and "broken" in done.stderr
    assert sorted(p.name for p in other.root.iterdir()) == [".refs", "broken"]


def test_bnb_nf4_checkpoint_loads_and_generates(converted_store: ModelStore) -> None:
    root = converted_store.root
    done = run_cellar(
        "quantize",
        HF_NAME,
        "--to",
        "bnb-nf4",
        "--name",
        "gemma-nf4",
        "--force",
        "--store",
        str(root),
    )
    assert done.returncode == 0, done.stderr + done.stdout
    manifest = converted_store.get("gemma-nf4")
    assert manifest.format == "hf" and manifest.lineage is not None
    assert manifest.lineage.method == "bitsandbytes"
    assert manifest.lineage.parent_sha256 == converted_store.get(HF_NAME).sha256
    # this 270M model loses much more than the 10% nf4 gate allows: --force, and it says so
    assert manifest.lineage.parameters["forced"] is True
    assert "registered because of --force" in " ".join(done.stdout.split())
    path = root / "gemma-nf4" / "gemma-nf4"
    config = json.loads((path / "config.json").read_text())
    assert config["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "model = AutoModelForCausalLM.from_pretrained(sys.argv[1], device_map='cpu')\n"
        "ids = tok('The capital of France is', return_tensors='pt').input_ids\n"
        "out = model.generate(ids, max_new_tokens=6, do_sample=False)\n"
        "print(out.shape[1] - ids.shape[1], type(model.model.layers[0].mlp.up_proj).__name__)\n"
    )
    generated = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    count, layer = generated.stdout.split()[-2:]
    assert int(count) == 6 and layer == "Linear4bit"


def test_checkpoint_to_gguf(converted_store: ModelStore, made: ModelStore, tmp_path: Path) -> None:
    """A checkpoint goes to GGUF through llama.cpp's converter, at its own precision (f32), with
    the bundled GGUF's tokenizer carried over: perplexity then matches the GGUF path's."""
    root = converted_store.root
    name = "gemma-hf-q8_0"
    done = run_cellar("quantize", HF_NAME, "--to", "q8_0", "--name", name, "--store", str(root))
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"tokenizer from {BUNDLED_NAME}" in done.stderr
    manifest = converted_store.get(name)
    bundled = converted_store.get(BUNDLED_NAME)
    assert manifest.lineage is not None and manifest.lineage.report is not None
    assert manifest.lineage.method == "llama.cpp-convert+quantize"
    parameters = manifest.lineage.parameters
    assert parameters["converted_as"] == "f32" and parameters["lossy"] is False
    assert parameters["tokenizer_from"] == {"name": BUNDLED_NAME, "sha256": bundled.sha256}
    figures = manifest.lineage.report
    # the f32 GGUF of the checkpoint scores like the f16 made from the bundled GGUF directly
    f16 = made.get(F16).lineage
    assert f16 is not None and f16.report is not None
    assert abs(figures["source_ppl"] / f16.report["result_ppl"] - 1) < 0.001
    assert figures["eval_tokens"] == f16.report["eval_tokens"]
    assert abs(figures["ppl_increase"]) <= 0.02
    ours, our_arrays = read_metadata(converted_store.file_of(manifest))
    theirs, their_arrays = read_metadata(converted_store.file_of(bundled))

    def tokenizer(keys: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in keys.items() if key.startswith("tokenizer.")}

    assert tokenizer(ours) == tokenizer(theirs) and tokenizer(theirs)
    assert tokenizer(our_arrays) == tokenizer(their_arrays)  # tokens, scores, types: lengths
    assert ours["tokenizer.ggml.model"] == "llama"  # SentencePiece, not a rebuilt BPE
    assert ours["general.file_type"] == 7  # Q8_0
    assert not list((root / name).glob("*source*"))  # the f32 intermediate is gone
    chain = json.loads(run_cellar("models", "show", name, "--store", str(root)).stdout)["chain"]
    assert [step.get("name") for step in chain[:3]] == [name, HF_NAME, BUNDLED_NAME]
    model = {"name": name, "source": f"store:{name}", "chat_template": "gemma", "preload": True}
    with start_gateway(tmp_path, root, [model]) as gw:
        answer = gw.client().completions.create(model=name, prompt="Hello", max_tokens=4)
        assert answer.usage is not None and answer.usage.completion_tokens == 4
