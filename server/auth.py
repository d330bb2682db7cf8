"""Who is calling: the API key in `Authorization: Bearer`, checked against the key file.

The key file is re-read when it changes on disk (checked with one stat per request), so
`cellar keys create` and `revoke` apply to a running gateway at once. A key whose secret has
passed scrypt once is remembered by a SHA-256 of the secret, so only a key's first request pays
for scrypt. Every other key takes the same path whether its id exists or not (one scrypt,
against a decoy record for an unknown id), and then, only for a key that checks out, its
state (revoked, expired). server/keyguard.py bounds that work per client and in all.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from fastapi import Request

from cellar.config_access import AuthSettings
from cellar.errors import ConfigError, InvalidApiKey, ModelNotAllowed, PermissionDenied
from cellar.keys import (
    KeyFile,
    KeyRecord,
    KeysError,
    Role,
    check_secret,
    decoy_record,
    split_key,
)
from cellar.server.keyguard import KeyGuard

log = logging.getLogger("cellar.auth")

MISSING = (
    "You didn't provide an API key. Send it in an Authorization header using Bearer auth "
    "(Authorization: Bearer YOUR_KEY); `cellar keys create` makes one."
)


@dataclass(frozen=True)
class Principal:
    """The caller of one request."""

    name: str
    role: Role
    models: frozenset[str] | None
    rpm: int | None = None
    tpm: int | None = None
    key_id: str | None = None
    priority: int = 0
    """Where its requests wait when they do not say (lower first; above 0: background)."""

    def check_model(self, model: str) -> None:
        if self.models is not None and model not in self.models:
            raise ModelNotAllowed(
                f"The API key {self.name!r} may not use the model `{model}`.", param="model"
            )


BATCH_SCOPE = "cellar.batch"
"""The ASGI scope key of a batch's request, sent in-process by server/batches.py (a request from
the network never has it)."""


@dataclass(frozen=True)
class OnBehalf:
    """A batch's request: whose it is, and its place in the queue."""

    principal: Principal
    batch_id: str
    priority: int


OPEN = Principal(name="-", role="admin", models=None)
"""The caller when keys are not in use."""


def _principal(record: KeyRecord) -> Principal:
    models = frozenset(record.models) if record.models is not None else None
    return Principal(
        record.name, record.role, models, record.rpm, record.tpm, record.id, record.priority
    )


class Authenticator:
    def __init__(self, settings: AuthSettings, path: Path) -> None:
        self.settings = settings
        self.path = path
        self._file = KeyFile(path)
        self._records: dict[str, KeyRecord] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked: dict[str, bytes] = {}
        self._guard = KeyGuard()
        self._decoy = decoy_record()
        self._sealed = settings.mode == "keys"
        """Keys have been required: from then on a missing or empty key file refuses every
        caller instead of opening the gateway (`auth.mode: auto`)."""
        try:
            self._reload()
        except KeysError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def required(self) -> bool:
        if self.settings.mode == "none":
            return False
        return self._sealed or bool(self._records)

    @property
    def has_keys(self) -> bool:
        return bool(self._records)

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return
        records = self._file.load()
        self._records = {r.id: r for r in records}
        self._checked.clear()
        self._stamp = stamp
        if records:
            self._sealed = self.settings.mode != "none"
            log.info("API keys: %d in %s", len(records), self.path)
        elif self._sealed:
            log.error(
                "API keys: %s is %s; every request is refused until it holds keys again",
                self.path,
                "missing" if stamp is None else "empty",
            )

    def refresh(self) -> None:
        """Pick up changes to the key file; a broken file keeps the keys loaded before."""
        try:
            self._reload()
        except KeysError as exc:
            log.error("%s; keeping the %d keys loaded before", exc, len(self._records))

    async def authenticate(self, authorization: str | None, client: str | None = None) -> Principal:
        """The caller of a request with this `Authorization` header, from address `client`."""
        self.refresh()
        if not self.required:
            return OPEN
        if not authorization or not authorization.lower().startswith("bearer "):
            raise InvalidApiKey(MISSING)
        key_id, secret = split_key(authorization[7:].strip()) or ("", "")
        record = self._records.get(key_id)
        fingerprint = hashlib.sha256(secret.encode()).digest()
        if record is None or self._checked.get(record.id) != fingerprint:
            self._guard.admit(client)
            against = record or self._decoy
            if not await self._guard.check(partial(check_secret, against, secret)) or not record:
                self._guard.failed(client)
                raise InvalidApiKey("Incorrect API key provided.")
            self._checked[record.id] = fingerprint
        state = record.state(datetime.now(UTC))
        if state != "active":
            raise InvalidApiKey(f"The API key {record.name!r} has been {state}.")
        return _principal(record)

    def principal_of(self, key_id: str | None) -> Principal | None:
        """The caller a key id stands for now (a batch runs as its owner); None when the key
        is gone, revoked or expired."""
        self.refresh()
        if not self.required:
            return OPEN
        record = self._records.get(key_id or "")
        if record is None or record.state(datetime.now(UTC)) != "active":
            return None
        return _principal(record)


def _authenticator(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.auth
    return auth


async def require_key(request: Request) -> Principal:
    """Dependency of the /v1 routes; the caller lands on request.state.principal (and on the
    audit entry: the key's name and id, never the key)."""
    entry = getattr(request.state, "audit", None)
    inside = request.scope.get(BATCH_SCOPE)  # set in-process only (server/batches.py)
    if inside is not None:
        request.state.principal = inside.principal
        if entry is not None:
            entry.key, entry.key_id = inside.principal.name, inside.principal.key_id
            entry.batch = inside.batch_id
        principal: Principal = inside.principal
        return principal
    header = request.headers.get("authorization")
    client = request.client.host if request.client else None
    try:
        principal = await _authenticator(request).authenticate(header, client)
    except InvalidApiKey:
        parts = split_key(header[7:].strip()) if header else None
        if entry is not None and parts is not None:
            entry.key_id = parts[0]
        raise
    request.state.principal = principal
    if entry is not None:
        entry.key, entry.key_id = principal.name, principal.key_id
    return principal


async def require_admin(request: Request) -> Principal:
    """Dependency of the /admin routes."""
    principal = await require_key(request)
    if principal.role != "admin":
        raise PermissionDenied(f"The API key {principal.name!r} is not an admin key.")
    return principal


async def health_access(request: Request) -> None:
    if _authenticator(request).settings.health == "key":
        await require_key(request)


async def metrics_access(request: Request) -> None:
    rule = _authenticator(request).settings.metrics
    if rule == "key":
        await require_key(request)
    elif rule == "admin":
        await require_admin(request)
