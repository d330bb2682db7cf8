"""Versions, tags, their history, garbage collection and disk use, on a real store with small
files (the CLI runs in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cellar.cli.main import app
from cellar.errors import StoreError
from cellar.gc import plan_gc
from cellar.store import Lineage, ModelStore
from cellar.tags import promote, rollback, set_tag, untag
from cellar.versions import parse_ref
from tests.files import fake_gguf

runner = CliRunner(env={"COLUMNS": "200"})


def _versions(tmp_path: Path, store: ModelStore, name: str, count: int) -> None:
    for index in range(count):
        source = fake_gguf(tmp_path / f"{name}{index}.gguf", bytes([index]) * (64 + index))
        store.import_file(source, name, why=f"build {index + 1}")


def test_references_parse() -> None:
    assert parse_ref("m").name == "m" and not parse_ref("m").follows
    assert parse_ref("m@3").version == 3
    assert parse_ref("m@prod").tag == "prod" and parse_ref("m@prod").follows
    assert parse_ref("m@latest").follows
    assert parse_ref("m@sha256:ABCDEF12").sha256 == "abcdef12"
    for bad in ("m@", "@prod", "m@sha256:abc", "m@-x"):
        with pytest.raises(StoreError, match="invalid"):
            parse_ref(bad)


def test_tags_promote_rollback_and_history(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    _versions(tmp_path, store, "m", 3)
    set_tag(store, "m", "1", "prod", "first release")
    set_tag(store, "m", "2", "staging", "candidate")
    moved = promote(store, "m", "staging", "prod", "passed evals")
    assert (moved.from_version, moved.to_version) == (1, 2)
    assert store.get("m@prod").version == 2
    set_tag(store, "m", "3", "prod", "hotfix")
    assert rollback(store, "m", "prod", "hotfix regressed").to_version == 2
    assert rollback(store, "m", "prod", "still bad").to_version == 1
    with pytest.raises(StoreError, match="no earlier version"):
        rollback(store, "m", "prod")
    with pytest.raises(StoreError, match="no version 9"):
        set_tag(store, "m", "9", "prod")
    with pytest.raises(StoreError, match="invalid tag"):
        set_tag(store, "m", "1", "latest")
    with pytest.raises(StoreError, match="no tag 'qa'"):
        promote(store, "m", "qa", "prod")
    untag(store, "m", "staging", "cleanup")
    assert store.refs.read("m").tags == {"prod": 1}

    result = runner.invoke(app, ["models", "history", "m", "--store", str(store.root)])
    assert result.exit_code == 0, result.output
    for why in ("build 3", "first release", "passed evals", "hotfix regressed", "still bad"):
        assert why in result.output
    assert [e.action for e in store.refs.read("m").history] == [
        *["add"] * 3,
        *["tag", "tag", "promote", "tag", "rollback", "rollback", "untag"],
    ]


def test_cli_moves_tags_and_lists_versions(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    _versions(tmp_path, store, "m", 2)
    where = ["--store", str(store.root)]
    tagged = runner.invoke(app, ["models", "tag", "m", "1", "prod", "--why", "go", *where])
    assert tagged.exit_code == 0 and "m@prod: nothing -> version 1" in tagged.output
    runner.invoke(app, ["models", "tag", "m", "2", "staging", *where])
    promoted = runner.invoke(
        app, ["models", "promote", "m", "--from", "staging", "--to", "prod", "-m", "ok", *where]
    )
    assert "version 1 -> version 2" in promoted.output
    back = runner.invoke(app, ["models", "rollback", "m", "--tag", "prod", "-m", "bad", *where])
    assert back.exit_code == 0 and "version 2 -> version 1" in back.output
    listed = runner.invoke(app, ["models", "list", *where])
    assert "prod" in listed.output and "latest, staging" in listed.output
    shown = json.loads(runner.invoke(app, ["models", "show", "m@prod", *where]).output)
    assert shown["version"] == 1
    missing = runner.invoke(app, ["models", "rollback", "m", "--tag", "qa", *where])
    assert missing.exit_code == 2 and "no tag 'qa'" in missing.output


def test_gc_keeps_what_is_referenced(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    _versions(tmp_path, store, "m", 5)
    set_tag(store, "m", "2", "prod")
    set_tag(store, "m", "3", "prod")  # 2 stays as prod's rollback target
    child_of_1 = store.add(
        "m-hf",
        "m.gguf",
        lambda path: str(fake_gguf(path, b"converted")) and None,
        fmt="gguf",
        source="test",
        lineage=Lineage(parent="m", parent_sha256=store.get("m@1").sha256, method="gguf-to-hf"),
    )
    plan = plan_gc(store, references=["m@4"])
    assert [m.label for m in plan.remove] == []  # 1 made m-hf (latest), 4 is in the config
    plan = plan_gc(store, references=[])
    assert [m.label for m in plan.remove] == ["m@4"]
    assert plan.keep["m@1"] == f"made {child_of_1.label}"
    assert plan.keep["m@2"] == "rollback target of prod"

    where = ["--store", str(store.root)]
    assert "m@4" in runner.invoke(app, ["models", "gc", "--dry-run", *where]).output
    refused = runner.invoke(app, ["models", "gc", *where], input="n\n")
    assert refused.exit_code == 1 and store.get("m@4")
    done = runner.invoke(app, ["models", "gc", "--yes", *where])
    assert done.exit_code == 0 and "removed 1 version" in done.output
    assert [m.version for m in store.versions("m")] == [1, 2, 3, 5]
    assert not (store.root / "m@4").exists()
    assert store.import_file(fake_gguf(tmp_path / "new.gguf", b"new"), "m").manifest.version == 6

    usage = runner.invoke(app, ["models", "du", *where])
    assert usage.exit_code == 0
    assert "m-hf" in usage.output and "prod=3" in usage.output


def test_a_tool_adds_versions_of_a_name_of_its_own_kind(tmp_path: Path) -> None:
    """`cellar finetune/quantize --name N` with N taken: a new version of N, if N holds the same
    kind of model; never a GGUF version of an adapter's name."""
    store = ModelStore(tmp_path / "store")
    assert store.next_of("fresh", "gguf") is None
    _versions(tmp_path, store, "m", 2)
    assert store.next_of("m", "gguf") == store.get("m@2")
    with pytest.raises(StoreError, match="stored as a gguf model, and this makes a peft one"):
        store.next_of("m", "peft")
