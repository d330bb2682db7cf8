"""Moving a model's tags: tag, promote, roll back, untag. Each move is checked against the
versions that exist, made under the refs file's lock and recorded (see cellar.versions)."""

from __future__ import annotations

from cellar.errors import StoreError
from cellar.store import Manifest, ModelStore
from cellar.versions import Move, Refs, check_tag, current_user, move, rollback_target


def _version(store: ModelStore, name: str, number: int, what: str) -> Manifest:
    for manifest in store.versions(name):
        if manifest.version == number:
            return manifest
    raise StoreError(f"{what}: model {name!r} has no version {number} (removed by `models gc`?)")


def set_tag(store: ModelStore, name: str, selector: str, tag: str, why: str = "") -> Move:
    """Point `tag` at the version `selector` names: a number, another tag or sha256:<prefix>."""
    check_tag(tag)
    target = store.get(f"{name}@{selector}")
    with store.refs.change(name) as refs:
        return move(refs, "tag", tag, target.version, target.sha256, why)


def promote(store: ModelStore, name: str, source: str, tag: str, why: str = "") -> Move:
    """Point `tag` at the version `source` (a tag) points at now."""
    check_tag(tag)
    with store.refs.change(name) as refs:
        if source not in refs.tags:
            raise StoreError(f"model {name!r} has no tag {source!r} to promote from")
        target = _version(store, name, refs.tags[source], f"{name}@{source}")
        return move(refs, "promote", tag, target.version, target.sha256, why)


def promote_version(store: ModelStore, name: str, version: int, tag: str, why: str) -> Move:
    """Point `tag` at `version` as a promotion (a guarded rollout that passed)."""
    target = _version(store, name, version, f"promoting {name}@{version}")
    with store.refs.change(name) as refs:
        return move(refs, "promote", tag, target.version, target.sha256, why)


def record_rollout(
    store: ModelStore, name: str, tag: str, current: int, candidate: int, why: str
) -> Move:
    """Record a guarded rollout's decision about `tag` (which does not move)."""
    with store.refs.change(name) as refs:
        entry = Move(
            time=Move.now(),
            user=current_user(),
            action="rollout",
            tag=tag,
            from_version=current,
            to_version=candidate,
            why=why,
        )
        refs.history.append(entry)
        return entry


def rollback(store: ModelStore, name: str, tag: str, why: str = "") -> Move:
    """Return `tag` to the version it held before its last move (repeat to go further back)."""
    with store.refs.change(name) as refs:
        if tag not in refs.tags:
            raise StoreError(f"model {name!r} has no tag {tag!r}")
        previous = rollback_target(refs, tag)
        if previous is None:
            raise StoreError(f"{name}@{tag} has no earlier version to roll back to")
        target = _version(store, name, previous, f"rolling back {name}@{tag}")
        return move(refs, "rollback", tag, target.version, target.sha256, why)


def untag(store: ModelStore, name: str, tag: str, why: str = "") -> Move:
    with store.refs.change(name) as refs:
        if tag not in refs.tags:
            raise StoreError(f"model {name!r} has no tag {tag!r}")
        entry = Move(
            time=Move.now(),
            user=current_user(),
            action="untag",
            tag=tag,
            from_version=refs.tags.pop(tag),
            why=why,
        )
        refs.history.append(entry)
        return entry


def history(store: ModelStore, name: str) -> Refs:
    if not store.versions(name) and not store.refs.read(name).history:
        raise StoreError(f"no model named {name!r} in the store at {store.root}")
    return store.refs.read(name)
