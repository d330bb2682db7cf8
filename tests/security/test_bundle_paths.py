"""Crafted bundles cannot write outside the store: a manifest whose artifact name climbs out,
an index whose model directory climbs out, links in a tar or a directory. All refused by the
real CLI before anything is written; a bundle re-packed with `tar -cf x.tar .` still reads."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from cellar.bundle.bundles import verify_bundle
from cellar.errors import StoreError
from cellar.store import ModelStore
from tests.gateway import run_cellar


def _bundle(root: Path, files: dict[str, bytes], models: list[dict[str, object]]) -> Path:
    """A bundle directory whose index lists `files` with their true sha256s (an attacker
    writes bundle.json too)."""
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    listed = {
        n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in files.items()
    }
    index = {"format": 1, "created": "2026-12-01T00:00:00+00:00", "models": models, "tags": {}}
    (root / "bundle.json").write_text(json.dumps({**index, "files": listed}))
    return root


def _manifest(file: str) -> bytes:
    manifest = {
        "name": "evil",
        "version": 1,
        "format": "gguf",
        "file": file,
        "size": 5,
        "sha256": "0" * 64,
        "source": "bundle",
        "created": "2026-12-01T00:00:00+00:00",
    }
    return json.dumps(manifest).encode()


def test_an_artifact_name_that_climbs_out_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "outside" / "pwned.txt"
    climb = "../" * 12 + str(target).lstrip("/")
    for file in (climb, str(target)):  # relative and absolute
        bundle = _bundle(
            tmp_path / f"bundle-{len(file)}",
            {"models/evil/manifest.json": _manifest(file), "models/evil/pwned.txt": b"owned"},
            [{"dir": "evil", "name": "evil", "version": 1, "sha256": "0" * 64}],
        )
        done = run_cellar("bundle", "import", str(bundle), "--store", str(tmp_path / "store"))
        assert done.returncode == 2, done.stdout + done.stderr
        assert "artifact name" in done.stderr and "single plain file name" in done.stderr
        assert not target.exists()


def test_a_model_directory_that_climbs_out_is_refused(tmp_path: Path) -> None:
    bundle = _bundle(
        tmp_path / "bundle",
        {"models/evil/manifest.json": _manifest("m.gguf")},
        [{"dir": "../../elsewhere", "name": "evil", "version": 1, "sha256": "0" * 64}],
    )
    done = run_cellar("bundle", "import", str(bundle), "--store", str(tmp_path / "store"))
    assert done.returncode == 2 and "invalid model directory '../../elsewhere'" in done.stderr


def test_the_store_refuses_an_artifact_name_with_a_path(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    for name in ("../x.gguf", "/tmp/x.gguf", "a/b.gguf", "..", ""):
        with pytest.raises(StoreError, match="single plain file name"):
            store.add("m", name, lambda path: None, fmt="gguf", source="test")
    assert not (tmp_path / "x.gguf").exists()


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_links_and_devices_in_a_tar_are_refused(tmp_path: Path) -> None:
    index = json.dumps({"format": 1, "files": {}, "models": [], "tags": {}}).encode()
    for kind in (tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE):
        link = tarfile.TarInfo("models/evil/model.gguf")
        link.type, link.linkname = kind, "/etc/passwd"
        bundle = _tar(tmp_path / f"b{kind!r}.tar", [_file("bundle.json", index), (link, None)])
        done = run_cellar("bundle", "verify", str(bundle))
        assert done.returncode == 2 and "models/evil/model.gguf" in done.stderr, done.stderr
        assert "regular files" in done.stderr


def test_a_symlink_in_a_bundle_directory_is_refused(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "bundle", {"models/evil/manifest.json": _manifest("m.gguf")}, [])
    os.symlink("/etc/passwd", bundle / "models" / "evil" / "m.gguf")
    done = run_cellar("bundle", "verify", str(bundle))
    assert done.returncode == 2 and "symbolic link" in done.stderr


def test_a_repacked_tar_with_dot_slash_names_still_reads(tmp_path: Path) -> None:
    data = b"weights"
    files = {"models/m/m.gguf": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}}
    index = json.dumps({"format": 1, "files": files, "models": [], "tags": {}}).encode()
    bundle = _tar(
        tmp_path / "repacked.tar",
        [_file("./bundle.json", index), _file("./models/m/m.gguf", data)],
    )
    assert verify_bundle(bundle).problems == []
