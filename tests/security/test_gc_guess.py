"""`cellar models gc` never guesses: with no config to say which versions deployments pin, it
refuses (instead of treating them all as unused); a removal cut short leaves nothing that breaks
the next one."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cellar.cli.main import app
from cellar.store import ModelStore
from tests.files import fake_gguf


def test_gc_without_a_config_refuses_to_guess(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/default.yaml here
    monkeypatch.setenv("CELLAR_CONFIG", str(tmp_path / "absent.yaml"))
    store = ModelStore(tmp_path / "store")
    for data in (b"one", b"two"):
        store.import_file(fake_gguf(tmp_path / "m.gguf", data), "m")
    where = ["--store", str(store.root)]
    refused = CliRunner().invoke(app, ["models", "gc", "--yes", *where])
    assert refused.exit_code == 2 and "--no-config" in refused.output
    assert [m.version for m in store.versions("m")] == [1, 2]
    done = CliRunner().invoke(app, ["models", "gc", "--yes", "--no-config", *where])
    assert done.exit_code == 0 and [m.version for m in store.versions("m")] == [2]


def test_a_leftover_of_an_interrupted_removal_does_not_break_the_next(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    for data in (b"one", b"two", b"three"):
        store.import_file(fake_gguf(tmp_path / "m.gguf", data), "m")
    leftover = store.root / ".removing.m@2"
    (leftover / "m.gguf").mkdir(parents=True)  # a crash mid-removal, long ago
    store.remove(store.get("m@2"))
    assert [m.version for m in store.versions("m")] == [1, 3]
    assert not list(store.root.glob(".removing.*"))
