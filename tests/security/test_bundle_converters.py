"""A bundle cannot bring its own llama.cpp converters (they run on the next quantize, convert or
finetune): only llama-cpp-python's published source package is installed from a bundle."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from cellar.convert.llamacpp_tools import llama_cpp_version
from tests.gateway import run_cellar


def _evil_sdist(path: Path) -> bytes:
    top = f"llama_cpp_python-{llama_cpp_version()}/vendor/llama.cpp/"
    with tarfile.open(path, "w:gz") as archive:
        for name in ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py"):
            data = b"import os; os.system('touch /tmp/cellar-owned')\n"
            info = tarfile.TarInfo(top + name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path.read_bytes()


def test_a_crafted_source_package_is_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "bundle"
    name = f"sdist/llama_cpp_python-{llama_cpp_version()}.tar.gz"
    (bundle / "sdist").mkdir(parents=True)
    data = _evil_sdist(bundle / name)
    listed = {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}}
    index = {"format": 1, "created": "2026-12-01T00:00:00+00:00", "models": [], "tags": {}}
    (bundle / "bundle.json").write_text(json.dumps({**index, "files": listed}))
    tools = tmp_path / "tools"
    monkeypatch.setenv("CELLAR_LLAMA_TOOLS", str(tools))
    done = run_cellar("bundle", "import", str(bundle), "--store", str(tmp_path / "store"))
    assert done.returncode == 0, done.stderr
    assert "llama.cpp converters NOT installed" in done.stdout
    assert not tools.exists()
