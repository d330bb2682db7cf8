"""Warm-up: a few real requests before a model counts as ready.

The first decode on a fresh worker pays for page-faulting the weights and allocating compute
buffers; warm-up pays it instead of the first user. The supervisor and `cellar warmup` run the
same code against any engine's OpenAI API.
"""

from __future__ import annotations

import statistics
import time

import httpx


async def time_to_first_token(
    client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int
) -> float:
    """Seconds from sending a streamed completion to its first token (`client` is an engine
    channel's, or any with a base URL)."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "temperature": 0,
    }
    started = time.perf_counter()
    first = 0.0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for chunk in response.aiter_raw():
            if not first and b'"text"' in chunk:
                first = time.perf_counter() - started
    return first or time.perf_counter() - started


async def cold_and_warm(
    client: httpx.AsyncClient, model: str, prompts: list[str], max_tokens: int, runs: int = 3
) -> tuple[float, float]:
    """TTFT of the very first request on a fresh engine, and the median TTFT after warm-up."""
    cold = await time_to_first_token(client, model, prompts[0], max_tokens)
    for prompt in prompts:
        await time_to_first_token(client, model, prompt, max_tokens)
    warm = [
        await time_to_first_token(client, model, f"{i}. {prompts[0]}", max_tokens)
        for i in range(runs)
    ]
    return cold, statistics.median(warm)


async def warm_up(
    client: httpx.AsyncClient, model: str, prompts: list[str], max_tokens: int
) -> list[float]:
    """Run each warm-up prompt once; the TTFT of each, in order."""
    return [await time_to_first_token(client, model, prompt, max_tokens) for prompt in prompts]


async def warm_up_embeddings(client: httpx.AsyncClient, model: str, texts: list[str]) -> float:
    """Embed the warm-up prompts once, each alone, then together (an embedding model's
    warm-up); the seconds it took."""
    started = time.perf_counter()
    for batch in [*([text] for text in texts), texts]:
        response = await client.post("/v1/embeddings", json={"model": model, "input": batch})
        response.raise_for_status()
    return time.perf_counter() - started
