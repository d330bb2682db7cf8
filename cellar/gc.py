"""Which stored versions garbage collection may remove, and how much disk each model uses.

Kept: the latest version of every name (what a bare `store:NAME` means), every tagged version,
the version each tag would roll back to, every version a deployment or adapter of the config
names, and, for everything kept, the models it was made from (its lineage, so chains stay
whole) and its same-weights forms (the checkpoint converted from a kept GGUF, the GGUF adapter
converted from a kept PEFT one). Everything else is an old version nothing points at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cellar.config import CellarConfig
from cellar.deployments import SAME_WEIGHTS
from cellar.errors import StoreError
from cellar.store import STORE_PREFIX, Manifest, ModelStore
from cellar.versions import rollback_target

FORMS_OF_ONE = SAME_WEIGHTS | {"lora-to-gguf"}
"""Lineage methods whose result is its parent in another format (a model or an adapter)."""


@dataclass
class GcPlan:
    remove: list[Manifest]
    keep: dict[str, str] = field(default_factory=dict)
    """Kept version (`NAME@N`) -> why."""

    @property
    def freed_bytes(self) -> int:
        return sum(m.size for m in self.remove)


def config_references(config: CellarConfig) -> list[str]:
    """The store references (`NAME`, `NAME@TAG` ...) of the config's models and adapters."""
    sources = [spec.source for spec in config.models]
    sources += [adapter.source for spec in config.models for adapter in spec.adapters]
    return [s.removeprefix(STORE_PREFIX) for s in sources if s.startswith(STORE_PREFIX)]


def plan_gc(store: ModelStore, references: list[str]) -> GcPlan:
    everything = store.list()
    keep: dict[str, str] = {}
    by_sha = {m.sha256: m for m in everything}

    def hold(manifest: Manifest, why: str) -> None:
        keep.setdefault(manifest.label, why)

    for name in {m.name for m in everything}:
        versions = store.versions(name)
        hold(versions[-1], "latest")
        refs = store.refs.read(name)
        numbered = {m.version: m for m in versions}
        for tag, number in refs.tags.items():
            if number in numbered:
                hold(numbered[number], f"tag {tag}")
            previous = rollback_target(refs, tag)
            if previous in numbered:
                hold(numbered[previous], f"rollback target of {tag}")
    for reference in references:
        try:
            hold(store.get(reference), f"config: store:{reference}")
        except StoreError:
            continue  # a broken reference keeps nothing; `cellar config check` reports it
    changed = True
    while changed:  # lineage and sibling closure
        changed = False
        for manifest in everything:
            if manifest.label in keep:
                parent = manifest.lineage and by_sha.get(manifest.lineage.parent_sha256)
                if parent and parent.label not in keep:
                    hold(parent, f"made {manifest.label}")
                    changed = True
            elif (
                manifest.lineage is not None
                and manifest.lineage.method in FORMS_OF_ONE
                and (parent := by_sha.get(manifest.lineage.parent_sha256)) is not None
                and parent.label in keep
            ):
                hold(manifest, f"{parent.label} in another format")
                changed = True
    return GcPlan([m for m in everything if m.label not in keep], keep)


@dataclass(frozen=True)
class Usage:
    name: str
    versions: int
    bytes: int
    tags: dict[str, int]


def disk_usage(store: ModelStore) -> list[Usage]:
    """Bytes per model name, all versions together, largest first."""
    rows = []
    for name in store.names():
        versions = store.versions(name)
        rows.append(
            Usage(name, len(versions), sum(m.size for m in versions), store.refs.read(name).tags)
        )
    return sorted(rows, key=lambda u: u.bytes, reverse=True)
