"""From a validated config to runnable deployments: model files and chat templates resolved."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cellar.chat import load_template_spec
from cellar.config import CellarConfig, ModelDeployment
from cellar.errors import ConfigError, StoreError
from cellar.store import Manifest, ModelStore

STORE_PREFIX = "store:"


@dataclass(frozen=True)
class ResolvedDeployment:
    """A deployment with its model file found and its chat template text loaded."""

    spec: ModelDeployment
    path: Path
    manifest: Manifest | None
    """Present when the model comes from the store (its sha256 is checked at load)."""
    chat_template: str | None


def resolve_path(source: str, store: ModelStore, base_dir: Path) -> tuple[Path, Manifest | None]:
    """The file behind a `source`; StoreError says why there is none."""
    if source.startswith(STORE_PREFIX):
        manifest = store.get(source.removeprefix(STORE_PREFIX))
        return store.file_of(manifest), manifest
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if not path.is_file():
        raise StoreError(f"no such file: {path}")
    return path, None


def resolve_deployments(
    config: CellarConfig, store: ModelStore, config_file: Path
) -> list[ResolvedDeployment]:
    """Resolve every deployment, or raise ConfigError naming the file and the key."""
    base_dir = config_file.parent
    resolved = []
    for index, spec in enumerate(config.models):
        key = f"{config_file}: models[{index}]"
        try:
            path, manifest = resolve_path(spec.source, store, base_dir)
        except StoreError as exc:
            raise ConfigError(f"{key}.source: {exc}") from None
        template = None
        if spec.chat_template is not None:
            try:
                template = load_template_spec(spec.chat_template, base_dir)
            except ValueError as exc:
                raise ConfigError(f"{key}.chat_template: {exc}") from None
        resolved.append(ResolvedDeployment(spec, path, manifest, template))
    return resolved
