"""`cellar tools install`: llama.cpp's converters unpacked from a source package, once."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cellar.cli.main import app
from cellar.convert.llamacpp_tools import ENV_TOOLS, ToolsMissing, install, script
from cellar.errors import StoreError

TOP = "llama_cpp_python-9.9.9/vendor/llama.cpp/"


def sdist(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_unpacks_the_converters_once(tmp_path: Path) -> None:
    package = sdist(
        tmp_path / "llama_cpp_python-9.9.9.tar.gz",
        {
            TOP + "convert_hf_to_gguf.py": "# hf",
            TOP + "convert_lora_to_gguf.py": "# lora",
            TOP + "conversion/__init__.py": "",
            TOP + "gguf-py/gguf/__init__.py": "",
            TOP + "gguf-py/tests/test_big.py": "",
            TOP + "ggml/src/ggml.c": "int main;",
            "llama_cpp_python-9.9.9/llama_cpp/llama.py": "",
        },
    )
    dest = tmp_path / "tools"
    assert install(package, dest) == (dest, True)
    unpacked = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert unpacked == [
        ".source-sha256",
        "conversion/__init__.py",
        "convert_hf_to_gguf.py",
        "convert_lora_to_gguf.py",
        "gguf-py/gguf/__init__.py",
    ]
    assert install(package, dest) == (dest, False)
    assert script("convert_lora_to_gguf.py", {ENV_TOOLS: str(dest)}).read_text() == "# lora"


def test_refuses_what_is_not_the_source_package(tmp_path: Path) -> None:
    other = sdist(tmp_path / "other.tar.gz", {"pkg/setup.py": ""})
    with pytest.raises(StoreError, match=r"other\.tar\.gz: not the llama-cpp-python source"):
        install(other, tmp_path / "tools")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar at all")
    with pytest.raises(StoreError, match=r"junk\.tar\.gz: not a readable source package"):
        install(junk, tmp_path / "tools")
    assert not (tmp_path / "tools").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.tar.gz", "other.tar.gz"]


def test_missing_converters_say_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(ToolsMissing, match="make setup"):
        script("convert_hf_to_gguf.py", {ENV_TOOLS: str(tmp_path)})
    result = CliRunner().invoke(app, ["tools", "show"], env={ENV_TOOLS: str(tmp_path)})
    assert result.exit_code == 1 and "cellar tools install" in result.output
