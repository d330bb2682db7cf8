"""LoRA adapters of a deployment, found in the form its engine needs.

`cellar finetune` stores an adapter twice: the PEFT directory (vLLM's `--lora-modules`) and,
made from it, a GGUF adapter (llama.cpp's `llama_adapter_lora_init`). A deployment's
`adapters:` name either one; the other is found by lineage, like a model's GGUF and checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cellar.config import AdapterDeployment
from cellar.errors import StoreError
from cellar.store import (
    ADAPTER_FORMATS,
    PEFT_CONFIG,
    STORE_PREFIX,
    Format,
    Manifest,
    ModelStore,
    sniff_format,
)

_DESCRIBED = {"gguf-lora": "a GGUF adapter", "peft": "a PEFT adapter directory"}


@dataclass(frozen=True)
class ResolvedAdapter:
    name: str
    """What clients ask for: `MODEL:ADAPTER`."""
    aliases: tuple[str, ...]
    path: Path
    format: Format
    scale: float
    rank: int | None
    """LoRA rank (of a PEFT adapter), for vLLM's --max-lora-rank."""
    manifest: Manifest | None


def _rank(path: Path, fmt: Format) -> int | None:
    if fmt != "peft":
        return None
    try:
        rank = json.loads((path / PEFT_CONFIG).read_text()).get("r")
    except (OSError, ValueError):
        return None
    return int(rank) if isinstance(rank, int) else None


def _forms(store: ModelStore, manifest: Manifest) -> dict[str, Manifest]:
    """The adapter's forms in the store: itself, and its parent or children that are adapters."""
    related = store.children(manifest.sha256)
    if manifest.lineage is not None:
        parent = store.find_sha(manifest.lineage.parent_sha256)
        if parent is not None:
            related.append(parent)
    forms: dict[str, Manifest] = {m.format: m for m in related if m.format in ADAPTER_FORMATS}
    forms[manifest.format] = manifest
    return forms


def resolve_adapter(
    spec: AdapterDeployment,
    model: str,
    engine: str,
    wanted: Format,
    store: ModelStore,
    base_dir: Path,
) -> ResolvedAdapter:
    """The adapter in the form `wanted` that `engine` loads; StoreError says why there is none."""
    manifest: Manifest | None = None
    if spec.source.startswith(STORE_PREFIX):
        found = store.get(spec.source.removeprefix(STORE_PREFIX))
        if found.format not in ADAPTER_FORMATS:
            raise StoreError(
                f"{found.name} is a model ({found.format}), not an adapter; `cellar finetune` "
                "makes adapters"
            )
        forms = _forms(store, found)
        if wanted not in forms:
            have = ", ".join(_DESCRIBED[f] for f in forms)
            raise StoreError(
                f"{engine} needs {_DESCRIBED[wanted]}, and store:{found.name} has only {have}"
            )
        manifest = forms[wanted]
        path, fmt = store.file_of(manifest), manifest.format
    else:
        path = Path(spec.source).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        if not path.exists():
            raise StoreError(f"no such file: {path}")
        fmt = sniff_format(path)
        if fmt != wanted:
            raise StoreError(f"{path}: {engine} needs {_DESCRIBED[wanted]}, not a {fmt} model")
    return ResolvedAdapter(
        name=f"{model}:{spec.name}",
        aliases=tuple(spec.aliases),
        path=path,
        format=fmt,
        scale=spec.scale,
        rank=_rank(path, fmt),
        manifest=manifest,
    )
