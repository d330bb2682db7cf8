from __future__ import annotations

from pathlib import Path

import pytest

from cellar.errors import IntegrityError, StoreError
from cellar.hashing import sha256_file, sha256_tree, tree_size
from cellar.store import Lineage, ModelStore
from tests.files import fake_checkpoint, fake_gguf


def test_import_records_manifest_and_is_idempotent(tmp_path: Path) -> None:
    src = fake_gguf(tmp_path / "m.gguf")
    store = ModelStore(tmp_path / "store")
    seen: list[tuple[int, int]] = []
    first = store.import_file(src, "m", progress=lambda d, t: seen.append((d, t)))
    assert first.created
    manifest = first.manifest
    assert (manifest.name, manifest.format, manifest.size) == ("m", "gguf", 68)
    assert manifest.sha256 == sha256_file(src)
    assert manifest.source == str(src.resolve())
    assert seen[-1] == (68, 68)
    assert store.file_of(manifest).read_bytes() == src.read_bytes()
    again = store.import_file(src, "m")
    assert not again.created and again.manifest == manifest
    assert [m.name for m in store.list()] == ["m"]


def test_other_bytes_under_a_name_make_its_next_version(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    first = store.import_file(fake_gguf(tmp_path / "a.gguf", b"a"), "m").manifest
    second = store.import_file(fake_gguf(tmp_path / "b.gguf", b"b"), "m").manifest
    assert (first.version, second.version) == (1, 2)
    assert store.get("m") == second == store.get("m@latest") == store.get("m@2")
    assert store.get("m@1") == first
    assert store.get(f"m@sha256:{first.sha256[:8]}") == first
    assert store.file_of(second) == tmp_path / "store" / "m@2" / "b.gguf"
    again = store.import_file(fake_gguf(tmp_path / "c.gguf", b"a"), "m")  # v1's bytes
    assert not again.created and again.manifest == first
    assert [m.label for m in store.list()] == ["m@1", "m@2"]
    with pytest.raises(StoreError, match="no version 3"):
        store.get("m@3")
    with pytest.raises(StoreError, match="no tag 'prod'"):
        store.get("m@prod")


def test_non_gguf_and_missing_files_are_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(StoreError, match="not a GGUF"):
        store.import_file(text, "notes")
    with pytest.raises(StoreError, match="no such file"):
        store.import_file(tmp_path / "absent.gguf", "absent")
    with pytest.raises(StoreError, match="invalid model name"):
        store.import_file(fake_gguf(tmp_path / "m.gguf"), "../escape")
    assert store.list() == []


def test_verify_catches_changed_and_missing_files(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    manifest = store.import_file(fake_gguf(tmp_path / "m.gguf"), "m").manifest
    assert store.verify("m") == manifest
    stored = store.file_of(manifest)
    stored.write_bytes(b"GGUF" + b"\x01" * 64)
    with pytest.raises(IntegrityError, match="sha256"):
        store.verify("m")
    stored.write_bytes(b"GGUF")
    with pytest.raises(IntegrityError, match="bytes"):
        store.verify("m")
    stored.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        store.verify("m")


def test_unknown_model_names_the_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=str(tmp_path)):
        ModelStore(tmp_path).get("nothing")


def test_checkpoint_directory_is_stored_with_a_tree_hash(tmp_path: Path) -> None:
    src = fake_checkpoint(tmp_path / "ckpt")
    store = ModelStore(tmp_path / "store")
    seen: list[tuple[int, int]] = []
    result = store.import_file(src, "c", progress=lambda d, t: seen.append((d, t)))
    manifest = result.manifest
    assert (manifest.format, manifest.size) == ("hf", tree_size(src))
    assert manifest.sha256 == sha256_tree(src)
    assert seen[-1] == (manifest.size, manifest.size)
    assert (store.file_of(manifest) / "config.json").is_file()
    assert not store.import_file(src, "c").created
    store.verify("c")
    (store.file_of(manifest) / "model.safetensors").write_bytes(b"\x01" * 32)  # same size
    with pytest.raises(IntegrityError, match="sha256"):
        store.verify("c")


def test_a_directory_that_is_no_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match=r"config\.json"):
        ModelStore(tmp_path / "store").import_file(tmp_path / "empty", "x")


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")

    def build(out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.add("half", "hf", build, fmt="hf", source="test")
    assert list((tmp_path / "store").iterdir()) == []


def test_children_follow_lineage(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    parent = store.import_file(fake_gguf(tmp_path / "p.gguf"), "p").manifest
    lineage = Lineage(parent="p", parent_sha256=parent.sha256, method="gguf-to-hf")

    def build(out: Path) -> None:
        (out / "config.json").write_text("{}")

    child = store.add(
        "p-hf",
        "hf",
        build,
        fmt="hf",
        source="test",
        lineage=lineage,
    )
    assert store.children(parent.sha256) == [child]
    assert store.find_sha(parent.sha256) == parent
    assert store.get("p-hf").lineage == lineage
