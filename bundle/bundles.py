"""Air-gapped bundles: everything a site without internet needs, in one tar file.

Layout (inside the tar, or the directory it is unpacked into):

    bundle.json        what is inside: Cellar's version, the target Python and platform, the
                       models and their tags, and the sha256 and size of every other file
    SHA256SUMS         the same sha256s for `sha256sum -c`, before Cellar is installed
    models/<dir>/      store versions exactly as the store holds them (manifest.json with its
                       lineage, and the artifact)
    wheels/            a wheelhouse: Cellar and every Python dependency for the target, built by
                       pip on the connected side, plus what building llama-cpp-python needs
    sdist/             llama-cpp-python's source package (to build llama.cpp for the target's
                       CPU offline; it also carries the converters `cellar tools install` needs)
    configs/           the configs to serve with

`verify` re-hashes every file and names each one that differs, is missing or was added.
`import` verifies first, then adds every model to the store (bytes already stored under the
same name are not stored twice) and sets its tags, mapped by sha256 to the local versions.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import json
import os
import platform
import posixpath
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from cellar import __version__
from cellar.convert.llamacpp_tools import (
    PUBLISHED_SDISTS,
    STAMP,
    install,
    llama_cpp_version,
    tools_dir,
)
from cellar.errors import ToolError
from cellar.gc import FORMS_OF_ONE
from cellar.hashing import copy_tree_hashing, files_under, sha256_file
from cellar.store import MANIFEST, Manifest, ModelStore, plain_name
from cellar.tags import set_tag
from cellar.versions import parse_ref, rollback_target

INDEX = "bundle.json"
SUMS = "SHA256SUMS"
FORMAT = 1
BUILD_REQUIREMENTS = ("scikit-build-core[pyproject]>=0.9.2", "cmake>=3.21", "ninja")
"""What pip needs to build llama-cpp-python from its source package without an index."""
Say = Callable[[str], None]


class BundleError(ToolError):
    """A bundle is damaged or cannot be made; the message names the file."""


@dataclass(frozen=True)
class Target:
    """The Python and platform the wheelhouse is for (default: this machine's)."""

    python_version: str | None = None
    platform: str | None = None

    def pip_args(self) -> list[str]:
        if self.python_version is None and self.platform is None:
            return []
        args = ["--only-binary=:all:"]
        if self.python_version:
            digits = self.python_version.replace(".", "")
            args += ["--python-version", self.python_version, "--implementation", "cp"]
            args += ["--abi", f"cp{digits}"]
        if self.platform:
            args += ["--platform", self.platform]
        return args

    def describe(self) -> dict[str, str]:
        here = f"{sys.version_info.major}.{sys.version_info.minor}"
        machine = f"{platform.system().lower()}_{platform.machine()}"
        return {"python": self.python_version or here, "platform": self.platform or machine}


# -- export --------------------------------------------------------------------------------


def _export_versions(store: ModelStore, ref: str) -> list[Manifest]:
    """NAME@X: that version. NAME: its latest, tagged and roll-back versions. Either way with
    its forms in the other format (the checkpoint made from a GGUF, for vLLM)."""
    parsed = parse_ref(ref)
    if "@" in ref:
        chosen = [store.get(ref)]
    else:
        versions = {m.version: m for m in store.versions(parsed.name)}
        if not versions:
            store.get(ref)  # says there is no such model
        refs = store.refs.read(parsed.name)
        wanted = {max(versions), *refs.tags.values()}
        wanted |= {v for tag in refs.tags if (v := rollback_target(refs, tag)) is not None}
        chosen = [versions[v] for v in sorted(wanted) if v in versions]
    shas = {m.sha256 for m in chosen}
    forms = [
        m
        for m in store.list()
        if m.lineage and m.lineage.method in FORMS_OF_ONE and m.lineage.parent_sha256 in shas
    ]
    return [*chosen, *(m for m in forms if m not in chosen)]


def project_root() -> Path | None:
    """The checkout Cellar runs from (it has pyproject.toml), or None when installed."""
    import cellar

    root = Path(cellar.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def _clean_copy(root: Path, into: Path) -> str:
    """pyproject.toml, the README and the packages it names, without build leftovers."""
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(root / name, into / name)
    for package in root.iterdir():
        if package.is_dir() and any(fnmatch.fnmatch(package.name, p) for p in patterns):
            shutil.copytree(
                package, into / package.name, ignore=shutil.ignore_patterns("__pycache__")
            )
    return str(into)


def _pip(args: list[str], say: Say) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    say(" ".join(command[2:]))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise BundleError(f"pip failed ({' '.join(args[:2])}):\n{done.stderr[-3000:]}")


def build_wheelhouse(
    dest: Path, extras: list[str], target: Target, find_links: list[Path], say: Say
) -> None:
    """Cellar's wheel and every dependency's, for `target`, into `dest`."""
    root = project_root()
    if root is None:
        raise BundleError(
            "export needs Cellar's source (a checkout with pyproject.toml) to build its wheel"
        )
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as clean:  # no stale build/ of the checkout in the wheel
        source = _clean_copy(root, Path(clean))
        _pip(["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dest), source], say)
    [wheel] = dest.glob("cellarlm-*.whl")
    requirement = f"{wheel}[{','.join(extras)}]" if extras else str(wheel)
    links = [arg for path in find_links if path.is_dir() for arg in ("--find-links", str(path))]
    verb = ["download", "-d"] if target.pip_args() else ["wheel", "-w"]
    _pip([*verb, str(dest), "-q", *links, *target.pip_args(), requirement], say)
    _pip([*verb, str(dest), "-q", *target.pip_args(), *BUILD_REQUIREMENTS], say)


def _llama_sdist(cache: Path, version: str, dest: Path, say: Say) -> Path:
    name = f"llama_cpp_python-{version}.tar.gz"
    dest.mkdir(parents=True, exist_ok=True)
    cached = cache / name
    if cached.is_file():
        shutil.copyfile(cached, dest / name)
    else:
        spec = f"llama-cpp-python=={version}"
        _pip(["download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(dest), spec], say)
    return dest / name


def export_bundle(
    store: ModelStore,
    refs: list[str],
    out: Path,
    configs: list[Path],
    *,
    extras: list[str],
    target: Target,
    wheel_cache: Path,
    llama_version: str,
    say: Say,
) -> dict[str, Any]:
    """Write the bundle to `out` (atomically: a failure leaves nothing). Returns its index."""
    manifests: list[Manifest] = []
    for ref in refs:
        for manifest in _export_versions(store, ref):
            if manifest not in manifests:
                manifests.append(manifest)
    for config in configs:
        if not config.is_file():
            raise BundleError(f"{config}: no such config file")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        say("building the wheelhouse")
        links = [p for p in wheel_cache.iterdir() if p.is_dir()] if wheel_cache.is_dir() else []
        build_wheelhouse(work / "wheels", extras, target, links, say)
        say("adding llama-cpp-python's source package")
        _llama_sdist(wheel_cache / "sdist", llama_version, work / "sdist", say)
        members: list[tuple[str, Path]] = []
        for manifest in manifests:
            folder = store.dir_of(manifest)
            for file in files_under(folder):
                members.append((f"models/{folder.name}/{file.relative_to(folder)}", file))
        for sub in ("wheels", "sdist"):
            members += [(f"{sub}/{f.name}", f) for f in sorted((work / sub).iterdir())]
        members += [(f"configs/{c.name}", c) for c in configs]
        index = _index(store, manifests, target)
        partial = work / "bundle.tar"
        with tarfile.open(partial, "w") as archive:
            for arcname, path in members:
                say(f"adding {arcname}")
                with path.open("rb") as handle:
                    index["files"][arcname] = _add(archive, arcname, handle, path.stat().st_size)
            sums = "".join(f"{v['sha256']}  {k}\n" for k, v in sorted(index["files"].items()))
            _add_bytes(archive, SUMS, sums.encode())
            _add_bytes(archive, INDEX, json.dumps(index, indent=2).encode())
        os.replace(partial, out)
        return index
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _index(store: ModelStore, manifests: list[Manifest], target: Target) -> dict[str, Any]:
    names = sorted({m.name for m in manifests})
    tags = {}
    for name in names:
        shas = {m.version: m.sha256 for m in manifests if m.name == name}
        tags[name] = {
            tag: shas[number]
            for tag, number in store.refs.read(name).tags.items()
            if number in shas
        }
    return {
        "format": FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "cellar": __version__,
        "target": target.describe(),
        "models": [
            {"dir": store.dir_of(m).name, "name": m.name, "version": m.version, "sha256": m.sha256}
            for m in manifests
        ],
        "tags": tags,
        "files": {},
    }


class _Hashing(io.RawIOBase):
    """Reads through a file, hashing what passes."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner, self.digest = inner, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        self.digest.update(data)
        buffer[: len(data)] = data
        return len(data)


def _add(archive: tarfile.TarFile, arcname: str, handle: IO[bytes], size: int) -> dict[str, Any]:
    info = tarfile.TarInfo(arcname)
    info.size, info.mode, info.mtime = size, 0o644, int(datetime.now(UTC).timestamp())
    reader = _Hashing(handle)
    archive.addfile(info, reader)
    return {"sha256": reader.digest.hexdigest(), "size": size}


def _add_bytes(archive: tarfile.TarFile, arcname: str, data: bytes) -> None:
    _add(archive, arcname, io.BytesIO(data), len(data))


# -- reading -------------------------------------------------------------------------------


def _read_index(text: bytes, where: str) -> dict[str, Any]:
    try:
        index: dict[str, Any] = json.loads(text)
    except ValueError as exc:
        raise BundleError(f"{where}: {INDEX} is not JSON: {exc}") from None
    if index.get("format") != FORMAT or not isinstance(index.get("files"), dict):
        raise BundleError(f"{where}: {INDEX} is not a Cellar bundle index (format {FORMAT})")
    return index


def member_name(raw: str, where: Path) -> str:
    """A name inside a bundle, normalised (`./bundle.json` is `bundle.json`), or BundleError
    when it is absolute or climbs out of the bundle."""
    name = posixpath.normpath(raw.replace("\\", "/"))
    if raw.startswith("/") or name == ".." or name.startswith("../") or "\0" in raw:
        raise BundleError(f"{where}: {raw!r} points outside the bundle; nothing was imported")
    return name


def _refused(where: Path, name: str, kind: str) -> BundleError:
    return BundleError(
        f"{where}: {name} is a {kind}; a bundle holds only regular files and directories, "
        "so nothing was imported"
    )


def _dir_entries(path: Path) -> Iterator[tuple[str, IO[bytes]]]:
    for folder, dirs, files in os.walk(path):  # does not follow symlinked directories
        for entry in sorted([*dirs, *files]):
            full = Path(folder, entry)
            name = full.relative_to(path).as_posix()
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise _refused(path, name, "symbolic link")
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise _refused(path, name, "device, FIFO or socket")
        for entry in sorted(files):
            full = Path(folder, entry)
            with full.open("rb") as opened:
                yield full.relative_to(path).as_posix(), opened


def _entries(path: Path) -> Iterator[tuple[str, IO[bytes]]]:
    """Every file of a bundle (tar or unpacked directory): its normalised name inside, and a
    reader. Links, devices and FIFOs are refused, as are names that leave the bundle."""
    if path.is_dir():
        yield from _dir_entries(path)
        return
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                name = member_name(member.name, path)
                if member.isdir():
                    continue
                if member.issym() or member.islnk():
                    raise _refused(path, member.name, "link")
                if not member.isfile():
                    raise _refused(path, member.name, "device, FIFO or special file")
                handle = archive.extractfile(member)
                assert handle is not None
                yield name, handle
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError(f"{path}: not a readable bundle (tar): {exc}") from None


@dataclass
class Verified:
    index: dict[str, Any]
    problems: list[str]


def verify_bundle(path: Path, say: Say = lambda _: None) -> Verified:
    """Re-hash every file; `problems` names each that differs, is missing or is unexpected."""
    if not path.exists():
        raise BundleError(f"{path}: no such file or directory")
    index: dict[str, Any] | None = None
    seen: dict[str, str] = {}
    for name, handle in _entries(path):
        if name == INDEX:
            index = _read_index(handle.read(), str(path))
            continue
        say(f"checking {name}")
        digest = hashlib.sha256()
        while block := handle.read(1 << 20):
            digest.update(block)
        seen[name] = digest.hexdigest()
    if index is None:
        raise BundleError(f"{path}: no {INDEX} inside; not a Cellar bundle")
    files: dict[str, dict[str, Any]] = index["files"]
    problems = []
    for name, expected in sorted(files.items()):
        if name not in seen:
            problems.append(f"{name}: missing")
        elif seen[name] != expected["sha256"]:
            problems.append(
                f"{name}: sha256 {seen[name]}, the bundle says {expected['sha256']} (damaged)"
            )
    extra = sorted(set(seen) - set(files) - {SUMS})
    problems += [f"{name}: not listed in {INDEX}" for name in extra]
    return Verified(index, problems)


def import_bundle(path: Path, store: ModelStore, say: Say, why: str = "") -> list[str]:
    """Verify, then add the bundle's models to `store` and set their tags. Returns one line
    per model version: what was stored (or found already there)."""
    checked = verify_bundle(path, say)
    if checked.problems:
        raise BundleError(
            f"{path} is damaged; nothing was imported:\n" + "\n".join(checked.problems)
        )
    index = checked.index
    why = why or f"imported from bundle {path.name} ({index['created']})"
    with _unpacked(path, store) as root:
        done, local = [], {}
        for entry in index["models"]:
            folder = root / "models" / plain_name(str(entry["dir"]), "model directory")
            try:
                manifest = Manifest.model_validate_json((folder / MANIFEST).read_text("utf-8"))
            except (OSError, ValidationError) as exc:
                raise BundleError(f"models/{entry['dir']}/{MANIFEST}: {exc}") from None
            same = [m for m in store.versions(manifest.name) if m.sha256 == manifest.sha256]
            if same:
                local[manifest.sha256] = same[0]
                done.append(f"{same[0].label}: already in the store")
                continue
            stored = store.add(
                manifest.name,
                manifest.file,
                partial(copy_tree_hashing, folder / manifest.file),
                fmt=manifest.format,
                source=manifest.source,
                lineage=manifest.lineage,
                why=why,
            )
            if stored.sha256 != manifest.sha256:
                store.remove(stored)
                raise BundleError(f"models/{entry['dir']}: sha256 changed while importing")
            local[stored.sha256] = stored
            done.append(f"{stored.label}: imported (version {manifest.version} where exported)")
        for name, tags in index["tags"].items():
            for tag, sha in tags.items():
                set_tag(store, name, str(local[sha].version), tag, why)
                done.append(f"{name}@{tag} -> version {local[sha].version}")
        done.append(_install_converters(root / "sdist"))
    return done


def _install_converters(sources: Path) -> str:
    """llama.cpp's converters from the bundle's llama-cpp-python source package, when it is
    the one published for the installed llama-cpp-python (they run on the next quantize,
    convert or finetune, so a bundle cannot bring its own)."""
    version = llama_cpp_version()
    sdist = sources / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.is_file():
        return f"llama.cpp converters not installed: no {sdist.name} in the bundle"
    sha, published = sha256_file(sdist), PUBLISHED_SDISTS.get(version)
    if sha != published:
        known = f"the published one is {published}" if published else "none is known"
        return (
            f"llama.cpp converters NOT installed: {sdist.name} has sha256 {sha}, and {known} "
            "for this version; the converters installed before are kept"
        )
    stamp = tools_dir() / STAMP
    before = stamp.read_text().strip() if stamp.is_file() else None
    where, written = install(sdist)
    if not written:
        return f"llama.cpp converters: {where} (already these)"
    replaced = f", replacing those from {before}" if before else ""
    return f"llama.cpp converters: {where} (from sdist {sha}{replaced})"


@contextlib.contextmanager
def _unpacked(path: Path, store: ModelStore) -> Iterator[Path]:
    """The bundle as a directory: itself, or its models and sources unpacked beside the store."""
    if path.is_dir():
        yield path
        return
    store.root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".bundle.", dir=store.root))
    try:
        with tarfile.open(path) as archive:
            wanted = [
                m
                for m in archive.getmembers()
                if member_name(m.name, path).startswith(("models/", "sdist/"))
                and (m.isfile() or m.isdir())  # verify_bundle refused anything else already
            ]
            # The names were checked above; the `data` filter is a second fence, not the only
            # one (Python 3.11 before 3.11.13 has known bypasses of it).
            archive.extractall(work, members=wanted, filter="data")
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
