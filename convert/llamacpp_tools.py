"""llama.cpp's Python converters, unpacked from the llama-cpp-python source package.

The wheel carries only the C library; the source package (sdist) also carries llama.cpp's
`convert_hf_to_gguf.py`, `convert_lora_to_gguf.py`, the `conversion` package they import and
`gguf-py`. `make setup` downloads the sdist once and `cellar tools install` unpacks those parts
into the user's data dir, so conversions run offline. The converters must match the C library
that reads their output, so the directory is named after the installed llama-cpp-python version.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import platformdirs

from cellar.errors import StoreError
from cellar.hashing import sha256_file

ENV_TOOLS = "CELLAR_LLAMA_TOOLS"
WANTED = (
    "convert_hf_to_gguf.py",
    "convert_lora_to_gguf.py",
    "conversion/",
    "gguf-py/gguf/",
    "LICENSE",
)
"""Paths under the sdist's vendor/llama.cpp/ that are unpacked."""
STAMP = ".source-sha256"
PUBLISHED_SDISTS = {
    "0.3.36": "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
}
"""sha256 of llama-cpp-python's source package on PyPI, by version: converters that come from
elsewhere (a bundle) are installed only from exactly that package."""


class ToolsMissing(StoreError):
    """The converters are not installed; the message says how to install them."""


def llama_cpp_version() -> str:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return "unknown"


def tools_dir(env: Mapping[str, str] = os.environ) -> Path:
    """$CELLAR_LLAMA_TOOLS, else ~/.local/share/cellar/llama.cpp-<llama-cpp-python version>."""
    if env.get(ENV_TOOLS):
        return Path(env[ENV_TOOLS])
    return Path(platformdirs.user_data_dir("cellar")) / f"llama.cpp-{llama_cpp_version()}"


def script(name: str, env: Mapping[str, str] = os.environ) -> Path:
    """The path of one converter script, or ToolsMissing saying how to install it."""
    found = tools_dir(env) / name
    if not found.is_file():
        raise ToolsMissing(
            f"llama.cpp's {name} is not installed (looked in {found.parent}). `make setup` "
            f"installs it; or run `cellar tools install llama_cpp_python-"
            f"{llama_cpp_version()}.tar.gz` with the llama-cpp-python source package."
        )
    return found


def gguf_py(env: Mapping[str, str] = os.environ) -> Path:
    """The directory to put first on PYTHONPATH so that `import gguf` is llama.cpp's own."""
    return tools_dir(env) / "gguf-py"


def child_env(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment for a converter's process: offline, with llama.cpp's own gguf-py first
    on the import path."""
    out = dict(env, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out["PYTHONPATH"] = os.pathsep.join([str(gguf_py(env)), *filter(None, [env.get("PYTHONPATH")])])
    return out


def _members(archive: tarfile.TarFile) -> tuple[str, list[tarfile.TarInfo]]:
    """The prefix `<top>/vendor/llama.cpp/` and the members under it that are wanted."""
    prefix = ""
    for member in archive.getmembers():
        if member.name.endswith("/vendor/llama.cpp/convert_hf_to_gguf.py"):
            prefix = member.name.removesuffix("convert_hf_to_gguf.py")
            break
    if not prefix:
        raise StoreError("no vendor/llama.cpp/convert_hf_to_gguf.py inside")
    chosen = [
        member
        for member in archive.getmembers()
        if member.isfile()
        and member.name.startswith(prefix)
        and member.name.removeprefix(prefix).startswith(WANTED)
    ]
    return prefix, chosen


def install(sdist: Path, dest: Path | None = None) -> tuple[Path, bool]:
    """Unpack the converters from `sdist` into `dest` (default: tools_dir()). Returns the
    directory and whether anything was written: the same source package again is a no-op."""
    dest = dest or tools_dir()
    if not sdist.is_file():
        raise StoreError(f"{sdist}: no such file")
    sha = sha256_file(sdist)
    stamp = dest / STAMP
    if stamp.is_file() and stamp.read_text().strip() == sha:
        return dest, False
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        try:
            with tarfile.open(sdist) as archive:
                prefix, members = _members(archive)
                for member in members:
                    member.name = member.name.removeprefix(prefix)
                archive.extractall(staging, members=members, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise StoreError(f"{sdist}: not a readable source package: {exc}") from None
        except StoreError as exc:
            raise StoreError(f"{sdist}: not the llama-cpp-python source package: {exc}") from None
        (staging / STAMP).write_text(sha + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest, True
