from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cellar.config import CellarConfig, ModelDeployment, config_json_schema, load_config
from cellar.engines.choice import resolve_here
from cellar.errors import ConfigError
from cellar.hardware import Hardware
from cellar.store import ModelStore

REPO = Path(__file__).resolve().parents[2]
CPU_ONLY = Hardware(gpus=(), apple_silicon=False, probe="none")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cellar.yaml"
    path.write_text(text)
    return path


def test_default_config_is_valid() -> None:
    config = load_config(REPO / "configs" / "default.yaml", env={})
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8000
    assert config.models[0].name == "gemma-3-270m"


def test_gpu_example_config_is_valid() -> None:
    config = load_config(REPO / "configs" / "gpu.yaml", env={})
    [gemma] = config.models
    assert (gemma.engine, gemma.llamacpp.n_gpu_layers, gemma.vllm.gpus) == ("auto", -1, [0])
    text = (REPO / "configs" / "gpu.yaml").read_text()
    commented = text[text.index("  # - name: llama-3.1-8b") :].splitlines()
    example = "\n".join(line.removeprefix("  # ") for line in commented)
    larger = ModelDeployment.model_validate(yaml.safe_load(example)[0])  # the commented one
    assert larger.vllm.tensor_parallel_size == 2


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "models:\n  - name: a\n    source: x.gguf\n    llamacpp: {n_cxt: 5}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(path) in str(caught.value)
    assert "models[0].llamacpp.n_cxt: unknown key" in str(caught.value)


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    path = _write(tmp_path, "server: {port: eighty}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert "server.port" in str(caught.value) and "'eighty'" in str(caught.value)


def test_invalid_yaml_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "server: [unclosed\n"), env={})
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(_write(tmp_path, "- just a list\n"), env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml", env={})


def test_duplicate_model_names_are_refused(tmp_path: Path) -> None:
    text = "models:\n  - {name: a, source: x}\n  - {name: a, source: y}\n"
    with pytest.raises(ConfigError, match="used twice"):
        load_config(_write(tmp_path, text), env={})


def test_env_overrides_host_port_and_store(tmp_path: Path) -> None:
    path = _write(tmp_path, "server: {host: 127.0.0.1, port: 8000}\n")
    env = {"CELLAR_HOST": "0.0.0.0", "CELLAR_PORT": "9001", "CELLAR_STORE": str(tmp_path)}
    config = load_config(path, env=env)
    assert (config.server.host, config.server.port) == ("0.0.0.0", 9001)
    assert config.store.path == tmp_path


def test_missing_store_model_and_bad_template_name_the_key(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    path = _write(tmp_path, "models:\n  - {name: a, source: 'store:nope'}\n")
    with pytest.raises(ConfigError) as caught:
        resolve_here(load_config(path, env={}), store, path, CPU_ONLY)
    assert "models[0].source" in str(caught.value) and "'nope'" in str(caught.value)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    path = _write(tmp_path, "models:\n  - {name: a, source: m.gguf, chat_template: nosuch}\n")
    with pytest.raises(ConfigError, match=r"models\[0\]\.chat_template"):
        resolve_here(load_config(path, env={}), store, path, CPU_ONLY)


def test_relative_sources_resolve_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    path = _write(tmp_path, "models:\n  - {name: a, source: m.gguf, chat_template: chatml}\n")
    [resolved] = resolve_here(load_config(path, env={}), ModelStore(tmp_path), path, CPU_ONLY)
    assert resolved.path == tmp_path / "m.gguf"
    assert resolved.chat_template is not None and "<|im_start|>" in resolved.chat_template


def test_every_field_is_described() -> None:
    def walk(model: type) -> None:
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            assert field.description, f"{model.__name__}.{name} has no description"
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                walk(annotation)

    walk(CellarConfig)


def test_committed_schema_is_current() -> None:
    committed = json.loads((REPO / "configs" / "schema.json").read_text())
    assert committed == config_json_schema(), "run `make schema` and commit configs/schema.json"
