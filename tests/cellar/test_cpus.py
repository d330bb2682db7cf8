"""`cpus`: core lists as Linux writes them, bounded before they are expanded, and refused with
the config key when they are malformed or name cores the gateway may not use."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellar.config import load_config
from cellar.cpus import format_cpu_list, parse_cpu_list
from cellar.engines.choice import resolve_here
from cellar.errors import ConfigError
from cellar.hardware import Hardware
from cellar.store import ModelStore
from tests.files import fake_gguf

TWO_CORES = Hardware(gpus=(), apple_silicon=False, probe="none", cpus=frozenset({0, 1}))


@pytest.mark.parametrize(
    ("text", "cores", "written"),
    [("0", {0}, "0"), ("1,0", {0, 1}, "0-1"), (" 5-7, 1-2,3", {1, 2, 3, 5, 6, 7}, "1-3,5-7")],
)
def test_lists_parse_and_print_as_linux_does(text: str, cores: set[int], written: str) -> None:
    assert parse_cpu_list(text) == cores
    assert format_cpu_list(parse_cpu_list(text)) == written


@pytest.mark.parametrize(
    "text", ["", " , ", "a", "1-", "-1", "3-1", "0-99999", "9" * 5000, "²", "٣", "0x1", "1.5"]
)
def test_malformed_lists_are_refused_before_expanding(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cpu_list(text)


def _config(tmp_path: Path, cpus: str) -> Path:
    fake_gguf(tmp_path / "m.gguf")
    path = tmp_path / "cellar.yaml"
    path.write_text(f"models:\n  - name: m\n    source: m.gguf\n    cpus: '{cpus}'\n")
    return path


def test_a_malformed_list_names_the_file_and_key(tmp_path: Path) -> None:
    path = _config(tmp_path, "0-")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(path) in str(caught.value) and "models[0].cpus" in str(caught.value)


def test_cores_the_gateway_may_not_use_are_refused_with_the_key(tmp_path: Path) -> None:
    path = _config(tmp_path, "1-3")
    config = load_config(path, env={})
    assert config.models[0].cpus == "1-3"
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ConfigError, match=r"models\[0\]\.cpus: core\(s\) 2-3 are not among .*0-1"):
        resolve_here(config, store, path, TWO_CORES)
    cannot_pin = Hardware(gpus=(), apple_silicon=True, probe="none", cpus=None)
    with pytest.raises(ConfigError, match=r"models\[0\]\.cpus: this system cannot pin"):
        resolve_here(config, store, path, cannot_pin)
    [resolved] = resolve_here(load_config(_config(tmp_path, "1"), env={}), store, path, TWO_CORES)
    assert resolved.spec.cpus == "1"
