"""From a validated config to runnable deployments: artifacts found, engine chosen, templates
loaded.

A deployment's source names one artifact (a GGUF file or a Hugging Face checkpoint). A model in
the store may have a sibling in the other format, made from it or it from them (its lineage):
the GGUF for llama.cpp, the checkpoint for vLLM. The engine chooser picks the engine and the
artifact it serves; it lives with the engines (see engines/choice.py) and is passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cellar.adapters import ResolvedAdapter, resolve_adapter
from cellar.chat import load_template_spec
from cellar.config import CellarConfig, ModelDeployment
from cellar.errors import ConfigError, EngineChoiceError, StoreError
from cellar.store import STORE_PREFIX, Format, Manifest, ModelStore, sniff_format

EngineName = Literal["llamacpp", "vllm"]
"""The engines there are (engines/kinds.py has one EngineKind for each)."""


@dataclass(frozen=True)
class Artifact:
    path: Path
    format: Format
    manifest: Manifest | None
    """Present when it comes from the store (its sha256 is checked at load)."""

    @property
    def label(self) -> str:
        return f"store:{self.manifest.label}" if self.manifest else str(self.path)


@dataclass(frozen=True)
class Artifacts:
    """The forms of one model that exist: the configured source and its siblings."""

    source: Artifact
    gguf: Artifact | None
    hf: Artifact | None


@dataclass(frozen=True)
class EngineChoice:
    engine: EngineName
    artifact: Artifact
    reason: str
    adapter_form: Format
    """The store format of the LoRA adapters this engine loads."""
    mixes_adapters: bool = True
    """Whether the engine decodes requests for different LoRA adapters in one batch correctly
    (the gateway keeps them apart when not)."""


Chooser = Callable[[ModelDeployment, Artifacts], EngineChoice]
"""Picks the engine; raises EngineChoiceError saying why no engine can serve the model here."""


@dataclass(frozen=True)
class ResolvedDeployment:
    """A deployment with its engine chosen, its artifact found and its chat template loaded."""

    spec: ModelDeployment
    engine: EngineName
    engine_reason: str
    artifact: Artifact
    chat_template: str | None
    adapters: tuple[ResolvedAdapter, ...] = ()
    """LoRA adapters, in the form the chosen engine needs."""
    mixes_adapters: bool = True
    version: Manifest | None = None
    """The stored version the source names (the artifact served may be its other format)."""

    @property
    def path(self) -> Path:
        return self.artifact.path

    @property
    def manifest(self) -> Manifest | None:
        return self.artifact.manifest

    @property
    def version_label(self) -> str:
        """`NAME@VERSION` of a stored model, else the file's path."""
        return self.version.label if self.version is not None else str(self.path)


def _store_artifact(store: ModelStore, manifest: Manifest) -> Artifact:
    return Artifact(store.file_of(manifest), manifest.format, manifest)


SAME_WEIGHTS = frozenset({"gguf-to-hf"})
"""Lineage methods whose result holds the same weights as its parent in another format."""


def _siblings(store: ModelStore, manifest: Manifest) -> list[Manifest]:
    """The model in its other format: its parent or its children by a same-weights conversion
    (not a quantization, and not an adapter trained on it)."""
    related = [
        child
        for child in store.children(manifest.sha256)
        if child.lineage is not None and child.lineage.method in SAME_WEIGHTS
    ]
    if manifest.lineage is not None and manifest.lineage.method in SAME_WEIGHTS:
        parent = store.find_sha(manifest.lineage.parent_sha256)
        if parent is not None:
            related.append(parent)
    return related


def find_artifacts(source: str, store: ModelStore, base_dir: Path) -> Artifacts:
    """The artifacts behind a `source`; StoreError says why there is none."""
    if source.startswith(STORE_PREFIX):
        manifest = store.get(source.removeprefix(STORE_PREFIX))
        main = _store_artifact(store, manifest)
        forms: dict[str, Artifact] = {}
        for sibling in _siblings(store, manifest):
            forms.setdefault(sibling.format, _store_artifact(store, sibling))
        forms[main.format] = main
        return Artifacts(main, forms.get("gguf"), forms.get("hf"))
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if path.is_dir():
        fmt = sniff_format(path)  # StoreError unless it is a checkpoint
    elif path.is_file():
        fmt = "gguf"
    else:
        raise StoreError(f"no such file: {path}")
    main = Artifact(path, fmt, None)
    return Artifacts(main, main if fmt == "gguf" else None, main if fmt == "hf" else None)


def resolve_one(
    spec: ModelDeployment, key: str, store: ModelStore, base_dir: Path, chooser: Chooser
) -> ResolvedDeployment:
    try:
        artifacts = find_artifacts(spec.source, store, base_dir)
    except StoreError as exc:
        raise ConfigError(f"{key}.source: {exc}") from None
    try:
        choice = chooser(spec, artifacts)
    except EngineChoiceError as exc:
        raise ConfigError(f"{key}.{exc.key}: {exc}") from None
    template = None
    if spec.chat_template is not None:
        try:
            template = load_template_spec(spec.chat_template, base_dir)
        except ValueError as exc:
            raise ConfigError(f"{key}.chat_template: {exc}") from None
    adapters = []
    for index, adapter in enumerate(spec.adapters):
        try:
            adapters.append(
                resolve_adapter(
                    adapter, spec.name, choice.engine, choice.adapter_form, store, base_dir
                )
            )
        except StoreError as exc:
            raise ConfigError(f"{key}.adapters[{index}].source: {exc}") from None
    return ResolvedDeployment(
        spec,
        choice.engine,
        choice.reason,
        choice.artifact,
        template,
        tuple(adapters),
        choice.mixes_adapters,
        artifacts.source.manifest,
    )


Resolver = Callable[[ModelDeployment], ResolvedDeployment]
"""Resolves one of the config's deployments again (a tag may have moved since)."""


def resolver_for(
    config: CellarConfig, store: ModelStore, config_file: Path, chooser: Chooser
) -> Resolver:
    """Resolves the config's deployments; ConfigError names the file and the key."""
    keys = {spec.name: f"{config_file}: models[{i}]" for i, spec in enumerate(config.models)}

    def resolve(spec: ModelDeployment) -> ResolvedDeployment:
        return resolve_one(spec, keys[spec.name], store, config_file.parent, chooser)

    return resolve


def resolve_deployments(
    config: CellarConfig, store: ModelStore, config_file: Path, chooser: Chooser
) -> list[ResolvedDeployment]:
    """Resolve every deployment, or raise ConfigError naming the file and the key."""
    resolve = resolver_for(config, store, config_file, chooser)
    return [resolve(spec) for spec in config.models]
