"""API keys: made once, shown once, stored only as salted scrypt hashes.

A key reads `sk-cellar-<id>-<secret>`. The id (8 hex digits) finds the record; the secret is
checked with scrypt (memory-hard, Python's standard library), and a made-up id against a decoy
record at the same cost (see server/auth.py). The key file is JSON, written atomically with
mode 0600.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cellar.errors import ToolError

ENV_KEYS = "CELLAR_KEYS"
PREFIX = "sk-cellar-"
ID_HEX = 8
Role = Literal["user", "admin"]

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
"""16 MiB and about 50 ms per check; the gateway caches a key once it has checked it."""
_SCRYPT_MAXMEM = 64 * 2**20


class KeysError(ToolError):
    """A key file or key operation that cannot proceed; the message says which and why."""


class KeyRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    role: Role = "user"
    models: list[str] | None = Field(None, description="Models it may use; None: all.")
    rpm: int | None = Field(None, description="Requests per minute; None: unlimited.")
    tpm: int | None = Field(None, description="Tokens per minute; None: unlimited.")
    priority: int = Field(
        0,
        ge=-100,
        le=1000,
        description="Queue priority of its requests (lower first; above 0: background work).",
    )
    created: datetime
    expires: datetime | None = None
    revoked: datetime | None = None
    salt: str
    hash: str
    kdf: str = f"scrypt:n={SCRYPT_N},r={SCRYPT_R},p={SCRYPT_P}"

    def state(self, now: datetime) -> Literal["active", "revoked", "expired"]:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    keys: list[KeyRecord] = Field(default_factory=list)


def default_keys_path(env: Mapping[str, str] = os.environ) -> Path:
    if env.get(ENV_KEYS):
        return Path(env[ENV_KEYS])
    return Path(platformdirs.user_data_dir("cellar")) / "keys.json"


def _digest(secret: str, salt: bytes, kdf: str) -> bytes:
    params = dict(part.split("=") for part in kdf.removeprefix("scrypt:").split(","))
    return hashlib.scrypt(
        secret.encode(),
        salt=salt,
        n=int(params["n"]),
        r=int(params["r"]),
        p=int(params["p"]),
        maxmem=_SCRYPT_MAXMEM,
        dklen=32,
    )


def decoy_record() -> KeyRecord:
    """A record no secret matches, with the cost of a real one: an unknown key id is checked
    against it, so that refusing it takes as long as refusing a wrong secret."""
    return KeyRecord(
        id="decoy",
        name="decoy",
        created=datetime.now(UTC),
        salt=secrets.token_hex(16),
        hash=secrets.token_hex(32),
    )


def split_key(key: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    if not key.startswith(PREFIX):
        return None
    rest = key[len(PREFIX) :]
    key_id, sep, secret = rest[:ID_HEX], rest[ID_HEX : ID_HEX + 1], rest[ID_HEX + 1 :]
    if sep != "-" or len(secret) < 16 or any(c not in "0123456789abcdef" for c in key_id):
        return None
    return key_id, secret


def check_secret(record: KeyRecord, secret: str) -> bool:
    """Slow on purpose (scrypt); run it off the event loop."""
    expected = bytes.fromhex(record.hash)
    return hmac.compare_digest(_digest(secret, bytes.fromhex(record.salt), record.kdf), expected)


def parse_expiry(text: str, now: datetime) -> datetime:
    """`90d`, `12h`, `30m` from now, or an ISO date/time."""
    units = {"d": "days", "h": "hours", "m": "minutes"}
    if text[-1:] in units and text[:-1].isdigit():
        return now + timedelta(**{units[text[-1]]: int(text[:-1])})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise KeysError(f"--expires {text!r}: use e.g. 90d, 12h or 2027-01-31") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


class KeyFile:
    """The key file on disk; every method reads it afresh, writers replace it atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[KeyRecord]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise KeysError(f"{self.path}: cannot read the key file: {exc.strerror}") from None
        try:
            return _File.model_validate_json(raw).keys
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise KeysError(
                f"{self.path}: not a Cellar key file: {where}: {first['msg']}"
            ) from None

    def _save(self, keys: list[KeyRecord]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(_File(keys=keys).model_dump_json(indent=1))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def create(
        self,
        name: str,
        *,
        role: Role = "user",
        models: list[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        expires: datetime | None = None,
        now: datetime | None = None,
        priority: int = 0,
    ) -> tuple[KeyRecord, str]:
        """A new key: its record (stored) and the key itself (shown once, never stored)."""
        now = now or datetime.now(UTC)
        keys = self.load()
        if not name.strip():
            raise KeysError("a key needs a name (--name)")
        if any(k.name == name and k.state(now) == "active" for k in keys):
            raise KeysError(f"an active key named {name!r} exists; revoke it or pick another name")
        for limit, value in (("--rpm", rpm), ("--tpm", tpm)):
            if value is not None and value < 1:
                raise KeysError(f"{limit} must be at least 1")
        taken = {k.id for k in keys}
        key_id = secrets.token_hex(ID_HEX // 2)
        while key_id in taken:
            key_id = secrets.token_hex(ID_HEX // 2)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        record = KeyRecord(
            id=key_id,
            name=name,
            role=role,
            models=models,
            rpm=rpm,
            tpm=tpm,
            priority=priority,
            created=now,
            expires=expires,
            salt=salt.hex(),
            hash="",
        )
        record.hash = _digest(secret, salt, record.kdf).hex()
        self._save([*keys, record])
        return record, f"{PREFIX}{key_id}-{secret}"

    def revoke(self, name_or_id: str, now: datetime | None = None) -> list[KeyRecord]:
        """Revoke the active keys with this name or id; the records stay (for the audit)."""
        now = now or datetime.now(UTC)
        keys = self.load()
        hits = [
            k
            for k in keys
            if (k.name == name_or_id or k.id == name_or_id) and k.state(now) != "revoked"
        ]
        if not hits:
            raise KeysError(f"no key named {name_or_id!r} that is not already revoked")
        for key in hits:
            key.revoked = now
        self._save(keys)
        return hits


def describe(record: KeyRecord, now: datetime) -> dict[str, str]:
    return {
        "id": record.id,
        "name": record.name,
        "role": record.role,
        "models": ",".join(record.models) if record.models else "all",
        "rpm": str(record.rpm or "-"),
        "tpm": str(record.tpm or "-"),
        "priority": str(record.priority),
        "state": record.state(now),
        "created": f"{record.created:%Y-%m-%d %H:%M}",
        "expires": f"{record.expires:%Y-%m-%d %H:%M}" if record.expires else "never",
    }
