"""Air-gapped bundles, for real: export with pip on this (connected) machine, then install,
import and serve in a fresh virtual environment inside a network namespace with no network
(`unshare -n`: only a loopback device, which the script brings up)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from cellar.store import ModelStore
from cellar.tags import set_tag
from tests.gateway import run_cellar

pytestmark = pytest.mark.slow

NAME = "gemma"
MODEL_FILE = f"models/{NAME}/gemma-3-270m-q4_k_m.gguf"
SITE_CONFIG = """\
models:
  - name: gemma-3-270m
    source: "store:gemma@prod"
    chat_template: gemma
    preload: true
    llamacpp: {n_ctx: 1024, n_parallel: 2}
"""

OFFLINE = """\
set -euo pipefail
ip link set lo up
python -c "import socket; socket.create_connection(('pypi.org', 443), timeout=5)" 2>/dev/null \
  && { echo "the network is reachable"; exit 3; }
cd "$SITE"
python -m venv "$VENV"
"$VENV/bin/pip" install -q --no-index --find-links wheels cellarlm
"$VENV/bin/cellar" bundle verify .
"$VENV/bin/cellar" bundle import . --why "site install"
"$VENV/bin/cellar" models list
"$VENV/bin/cellar" serve --config configs/site.yaml > "$SITE/serve.log" 2>&1 &
trap 'kill %1' EXIT
"$VENV/bin/python" - <<'PY'
import time, httpx
for _ in range(600):
    try:
        if httpx.get("http://127.0.0.1:8000/health/ready").status_code == 200:
            break
    except httpx.HTTPError:
        pass
    time.sleep(0.5)
reply = httpx.post("http://127.0.0.1:8000/v1/chat/completions", timeout=120, json={
    "model": "gemma-3-270m", "max_tokens": 8,
    "messages": [{"role": "user", "content": "Say hello."}]})
print("STATUS", reply.status_code, reply.headers.get("x-cellar-model-version"))
print("ANSWER", reply.json()["choices"][0]["message"]["content"])
PY
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, bundled_gguf: Path) -> Path:
    """A bundle of `gemma@prod` and a site config, exported by the real CLI."""
    work = tmp_path_factory.mktemp("bundle")
    store = ModelStore(work / "store")
    store.import_file(bundled_gguf, NAME)
    set_tag(store, NAME, "1", "prod", "release")
    (work / "site.yaml").write_text(SITE_CONFIG)
    out = work / "site.tar"
    done = run_cellar(
        "bundle", "export", "--models", NAME, "--out", str(out),
        "--with-config", str(work / "site.yaml"), "--store", str(store.root),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1 model version(s)" in done.stdout
    return out


def _unpack(bundle: Path, where: Path) -> Path:
    where.mkdir()
    subprocess.run(["tar", "-xf", str(bundle), "-C", str(where)], check=True)
    return where


def test_install_import_and_serve_with_no_network(bundle: Path, tmp_path: Path) -> None:
    site = _unpack(bundle, tmp_path / "site")
    names = set(os.listdir(site))
    assert {"bundle.json", "SHA256SUMS", "models", "wheels", "sdist", "configs"} <= names
    sums = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=site)
    assert sums.returncode == 0
    home = tmp_path / "home"  # the offline side's store, keys and converters
    home.mkdir()
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/bin",
        "HOME": str(home),
        "SITE": str(site),
        "VENV": str(tmp_path / "venv"),
        "PIP_NO_CACHE_DIR": "1",
        "PIP_CONFIG_FILE": os.devnull,
    }
    python = shutil.which("python3.11") or sys.executable
    env["PATH"] = f"{Path(python).parent}:{env['PATH']}"
    script = OFFLINE.replace("python -m venv", f"{python} -m venv")
    done = subprocess.run(
        ["unshare", "-n", "bash", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = (site / "serve.log").read_text() if (site / "serve.log").exists() else ""
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{log}"
    assert "files match ." in done.stdout
    assert f"{NAME}@1: imported" in done.stdout and f"{NAME}@prod -> version 1" in done.stdout
    assert "llama.cpp converters: " in done.stdout
    assert f"STATUS 200 {NAME}@1" in done.stdout
    answer = done.stdout.split("ANSWER", 1)[1].strip()
    assert answer, done.stdout
    assert (home / ".local/share/cellar/models" / NAME / "manifest.json").is_file()


def test_one_flipped_byte_is_refused_and_named(bundle: Path, tmp_path: Path) -> None:
    site = _unpack(bundle, tmp_path / "site")
    model = site / MODEL_FILE
    with model.open("r+b") as handle:
        handle.seek(model.stat().st_size // 3)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0x01]))
    store = tmp_path / "store"
    checked = run_cellar("bundle", "verify", str(site))
    assert checked.returncode == 1
    assert f"FAIL {MODEL_FILE}: sha256" in checked.stderr
    imported = run_cellar("bundle", "import", str(site), "--store", str(store))
    assert imported.returncode == 2
    assert MODEL_FILE in imported.stderr and "nothing was imported" in imported.stderr
    assert ModelStore(store).list() == []

    damaged = tmp_path / "damaged.tar"  # the same inside the tar itself
    shutil.copyfile(bundle, damaged)
    with tarfile.open(damaged) as archive:
        offset = archive.getmember(MODEL_FILE).offset_data
    with damaged.open("r+b") as handle:
        handle.seek(offset + 1000)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0x80]))
    for command in (["verify"], ["import", "--store", str(store)]):
        refused = run_cellar("bundle", command[0], str(damaged), *command[1:])
        assert refused.returncode != 0
        assert MODEL_FILE in refused.stderr
    assert ModelStore(store).list() == []
