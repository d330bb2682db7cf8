"""Requests and tokens per minute per API key, as token buckets.

A bucket holds up to a minute's allowance and refills continuously. A request takes one request
and its estimated tokens (prompt characters / 4 + the completion tokens it may produce) when it
is admitted; when it ends, the estimate is replaced by the real count from its usage. A request
that does not fit is refused at once (429 with Retry-After) and never waits, so one key over its
limit holds up no one else.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from cellar.errors import RateLimited
from cellar.server.auth import Principal


@dataclass
class Bucket:
    capacity: float
    per_s: float
    level: float
    updated: float = field(default_factory=time.monotonic)

    @classmethod
    def per_minute(cls, limit: int) -> Bucket:
        return cls(capacity=float(limit), per_s=limit / 60.0, level=float(limit))

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.per_s)
        self.updated = now

    def wait_s(self, amount: float) -> float:
        """Seconds until `amount` fits (0 when it fits now; inf when it never can)."""
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self.level) / self.per_s)

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self.level) / self.per_s)


def _duration(seconds: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 20ms."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


@dataclass
class Grant:
    """What an admitted request took, settled when it ends."""

    key_id: str | None
    tokens: float
    headers: dict[str, str]


class RateLimiter:
    def __init__(self) -> None:
        self._requests: dict[str, Bucket] = {}
        self._tokens: dict[str, Bucket] = {}

    def _buckets(self, principal: Principal) -> tuple[Bucket | None, Bucket | None]:
        key = principal.key_id or principal.name
        requests = tokens = None
        if principal.rpm is not None:
            requests = self._requests.get(key)
            if requests is None or requests.capacity != principal.rpm:
                requests = self._requests[key] = Bucket.per_minute(principal.rpm)
        if principal.tpm is not None:
            tokens = self._tokens.get(key)
            if tokens is None or tokens.capacity != principal.tpm:
                tokens = self._tokens[key] = Bucket.per_minute(principal.tpm)
        return requests, tokens

    @staticmethod
    def _headers(requests: Bucket | None, tokens: Bucket | None) -> dict[str, str]:
        headers = {}
        for kind, bucket in (("requests", requests), ("tokens", tokens)):
            if bucket is None:
                continue
            headers[f"x-ratelimit-limit-{kind}"] = str(int(bucket.capacity))
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, int(bucket.level)))
            headers[f"x-ratelimit-reset-{kind}"] = _duration(bucket.reset_s())
        return headers

    def admit(self, principal: Principal, estimated_tokens: int) -> Grant:
        """Take one request and the estimate, or raise RateLimited without taking anything."""
        requests, tokens = self._buckets(principal)
        if requests is None and tokens is None:
            return Grant(None, 0, {})
        now = time.monotonic()
        waits = []
        for bucket, amount in ((requests, 1.0), (tokens, float(estimated_tokens))):
            if bucket is not None:
                bucket.refill(now)
                waits.append((bucket.wait_s(amount), bucket is requests))
        wait, on_requests = max(waits)
        if wait > 0:
            headers = self._headers(requests, tokens)
            if math.isinf(wait):
                raise RateLimited(
                    f"This request may use {estimated_tokens} tokens, more than the "
                    f"{principal.tpm} tokens per minute of the API key {principal.name!r}. "
                    "Lower max_tokens or shorten the prompt.",
                    retry_after_s=None,  # no wait helps
                    limit_headers=headers,
                )
            what = "requests" if on_requests else "tokens"
            limit = principal.rpm if on_requests else principal.tpm
            raise RateLimited(
                f"Rate limit reached for the API key {principal.name!r}: {limit} {what} per "
                f"minute. Please try again in {_duration(wait)}.",
                retry_after_s=max(1, math.ceil(wait)),
                limit_headers=headers,
            )
        if requests is not None:
            requests.level -= 1
        if tokens is not None:
            tokens.level -= estimated_tokens
        return Grant(
            principal.key_id or principal.name, estimated_tokens, self._headers(requests, tokens)
        )

    def settle(self, grant: Grant, used_tokens: int | None) -> None:
        """Replace the estimate by the tokens really used (when the usage is known)."""
        if grant.key_id is None or used_tokens is None:
            return
        bucket = self._tokens.get(grant.key_id)
        if bucket is not None:
            bucket.level = min(bucket.capacity, bucket.level + grant.tokens - used_tokens)
