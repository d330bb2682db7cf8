"""`cellar models convert --to hf` on the bundled GGUF, and `cellar models explain` on the result.

The checkpoint is made once per session by the real CLI (the `converted_store` fixture).
The only fake here is GPU detection, to show what `auto` would pick on a GPU machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import llama_cpp
import pytest
import yaml
from typer.testing import CliRunner

from cellar import hardware
from cellar.cli.main import app
from cellar.store import ModelStore
from tests.gateway import BUNDLED_NAME, HF_NAME, MODEL, vllm_settings

pytestmark = pytest.mark.slow
runner = CliRunner()
TEXT = "The cellar kept   twelve barrels of wine,\nand the keeper counted them twice: 12, 12."


def test_checkpoint_is_registered_with_its_lineage(converted_store: ModelStore) -> None:
    parent = converted_store.get(BUNDLED_NAME)
    manifest = converted_store.verify(HF_NAME)
    assert manifest.format == "hf"
    assert manifest.lineage is not None
    assert manifest.lineage.parent == BUNDLED_NAME
    assert manifest.lineage.parent_sha256 == parent.sha256
    assert manifest.lineage.method == "gguf-to-hf"
    assert manifest.lineage.tools["transformers"] != "missing"
    checkpoint = converted_store.file_of(manifest)
    config = json.loads((checkpoint / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["Gemma3ForCausalLM"]


def test_checkpoint_tokenizes_like_llamacpp_with_bos(
    converted_store: ModelStore, bundled_gguf: Path
) -> None:
    from transformers import AutoTokenizer

    checkpoint = converted_store.file_of(converted_store.get(HF_NAME))
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    vocab = llama_cpp.Llama(str(bundled_gguf), vocab_only=True, verbose=False)
    expected = vocab.tokenize(TEXT.encode(), add_bos=True)
    assert expected[0] == vocab.token_bos()
    assert tokenizer(TEXT).input_ids == expected


def test_converting_again_is_a_no_op(converted_store: ModelStore) -> None:
    before = converted_store.get(HF_NAME)
    args = ["models", "convert", BUNDLED_NAME, "--to", "hf", "--name", HF_NAME]
    result = runner.invoke(app, [*args, "--store", str(converted_store.root)])
    assert result.exit_code == 0, result.output
    assert converted_store.get(HF_NAME) == before


def test_convert_refuses_what_it_cannot_do(converted_store: ModelStore) -> None:
    store = ["--store", str(converted_store.root)]
    bad_target = runner.invoke(app, ["models", "convert", BUNDLED_NAME, "--to", "onnx", *store])
    assert bad_target.exit_code == 2 and "unknown target format" in bad_target.output
    not_gguf = runner.invoke(app, ["models", "convert", HF_NAME, "--to", "hf", *store])
    assert not_gguf.exit_code == 2 and "not a GGUF" in not_gguf.output


def _explain(store: ModelStore, tmp_path: Path) -> str:
    config = tmp_path / "cellar.yaml"
    model = {
        "name": MODEL,
        "source": f"store:{BUNDLED_NAME}",
        "chat_template": "gemma",
        "vllm": vllm_settings(),
    }
    config.write_text(yaml.safe_dump({"store": {"path": str(store.root)}, "models": [model]}))
    result = runner.invoke(app, ["models", "explain", MODEL, "--config", str(config)])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_explain_on_this_cpu_machine_picks_llamacpp(
    converted_store: ModelStore, tmp_path: Path
) -> None:
    out = _explain(converted_store, tmp_path)
    assert f"{MODEL}: llamacpp" in out
    assert f"serves: store:{BUNDLED_NAME}@1 (gguf)" in out
    assert "no NVIDIA GPU visible" in out


def test_explain_with_a_gpu_picks_vllm_for_the_checkpoint(
    converted_store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h100 = hardware.Gpu(0, "NVIDIA H100 80GB HBM3", 80 * 2**30, "580.65")
    monkeypatch.setattr(hardware, "detect_gpus", lambda: ([h100], "nvml"))
    out = _explain(converted_store, tmp_path)
    assert f"{MODEL}: vllm" in out
    assert f"serves: store:{HF_NAME}@1 (hf)" in out
    assert "H100" in out and "vllm-cpu" in out
