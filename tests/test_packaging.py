"""The wheel installs one import package, `cellar`, and an installed Cellar serves from a folder
holding decoys of its parts: neither the CLI nor its workers run code from the working
directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from cellar.benchmarks.gateway import wait_settled
from cellar.engines.process import free_port
from cellar.store import ModelStore
from tests.gateway import BUNDLED_NAME, REPO

pytestmark = pytest.mark.slow

DECOY = "open({marker!r}, 'a').write(__name__ + '\\n')\n"
"""A decoy package that records being imported."""


def _source(tmp: Path) -> Path:
    """The project's packaging files and packages, without the checkout's build/ leftovers
    (stale modules there would end up in the wheel)."""
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    parts = [path.name for path in (REPO / "cellar").iterdir() if path.is_symlink()]
    for name in ("cellar", *parts):
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(REPO / name, source / name, symlinks=True, ignore=ignore)
    return source


def _build_and_install(tmp: Path) -> Path:
    wheels = tmp / "wheels"
    pip = [sys.executable, "-m", "pip", "-q"]
    source = _source(tmp)
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    [wheel] = wheels.glob("cellarlm-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"cellar"}
    site = tmp / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return site


def _decoys(folder: Path, marker: Path) -> None:
    for name in ("cellar", "engines", "server"):
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(DECOY.format(marker=str(marker)))
    (folder / "engines" / "llamacpp").mkdir()
    (folder / "engines" / "llamacpp" / "__init__.py").write_text(DECOY.format(marker=str(marker)))


def test_the_installed_wheel_serves_from_a_folder_of_decoys(
    tmp_path: Path, store: ModelStore
) -> None:
    site = _build_and_install(tmp_path)
    work, marker = tmp_path / "work", tmp_path / "imported-decoys.txt"
    _decoys(work, marker)
    # The installed package comes first; the checkout's editable install is not on this path.
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"}
    cellar = [sys.executable, "-P", "-m", "cellar"]

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=120)

    where = run(sys.executable, "-P", "-c", "import cellar; print(cellar.__file__)")
    assert where.stdout.strip() == str(site / "cellar" / "__init__.py")
    assert run(sys.executable, "-P", "-c", "import server").returncode != 0
    helped = run(*cellar, "--help")
    assert helped.returncode == 0 and "serve" in helped.stdout

    port = free_port()
    config = work / "cellar.yaml"
    model: dict[str, Any] = {
        "name": "m",
        "source": f"store:{BUNDLED_NAME}",
        "chat_template": "gemma",
    }
    model |= {"preload": True, "llamacpp": {"n_ctx": 1024, "n_parallel": 2}}
    config.write_text(
        yaml.safe_dump(
            {
                "server": {"port": port},
                "store": {"path": str(store.root)},
                "auth": {"mode": "none"},
                "audit": {"enabled": False},
                "batches": {"dir": str(work / "batches")},
                "models": [model],
            }
        )
    )
    log = tmp_path / "gateway.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*cellar, "serve", "--config", str(config)], cwd=work, env=env, stdout=sink, stderr=sink
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            wait_settled(http, process, log)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        with client:
            reply = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "Hello"}], max_tokens=4
            )
        assert reply.usage is not None and reply.usage.completion_tokens > 0
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert not marker.exists(), f"decoys were imported: {marker.read_text()}"
