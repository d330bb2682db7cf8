"""Quality and speed of a quantized GGUF next to its source, measured with llama.cpp itself.

- Perplexity, llama.cpp's way: the evaluation text is cut into windows of N_CTX tokens, each
  starting with BOS; the second half of each window is scored, so every scored token has at
  least N_CTX/2 tokens of context. Source and result share the tokenizer (a GGUF carries its
  own; quantization does not touch it), so their perplexities compare.
- KL divergence: per scored position, KL(source || result) over the whole vocabulary; the mean.
- Golden prompts: greedy completions that must match their regex.
- Speed: prompt tokens/s over a 256-token prompt and decode tokens/s over 64 greedy steps
  (medians of 3). RAM at load: how much a fresh process's resident memory grows when it loads
  the model into memory (no mmap), so that every weight counts.

Runs in a child process (`python -m cellar.quantize.evaluate REQUEST.json OUT.json`), which keeps
llama.cpp's logs and memory out of the CLI.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

N_CTX = 512
PROMPT_TOKENS = 256
DECODE_STEPS = 64


def _llama(path: Path, *, logits_all: bool, threads: int, n_ctx: int = N_CTX) -> Any:
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        logits_all=logits_all,
        n_threads=threads,
        verbose=False,
    )


def _log_softmax(rows: np.ndarray) -> np.ndarray:
    shifted = rows - rows.max(axis=1, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return result


def _scored(llm: Any, window: list[int]) -> np.ndarray:
    """Log-probabilities at the scored positions of one window."""
    llm.reset()
    llm.eval(window)
    first = N_CTX // 2
    return _log_softmax(np.asarray(llm.scores[first : N_CTX - 1], dtype=np.float32))


def compare_texts(source: Path, result: Path, text: str, threads: int) -> dict[str, Any]:
    """Perplexity of both models and the mean KL divergence, on the same windows."""
    a = _llama(source, logits_all=True, threads=threads)
    b = _llama(result, logits_all=True, threads=threads)
    tokens = a.tokenize(text.encode(), add_bos=False, special=False)
    if tokens != b.tokenize(text.encode(), add_bos=False, special=False):
        raise ValueError("the two models tokenize the evaluation text differently")
    windows = len(tokens) // N_CTX
    if windows < 1:
        raise ValueError(f"the evaluation text has {len(tokens)} tokens; it needs {N_CTX} or more")
    nll_a, nll_b, kls = [], [], []
    first = N_CTX // 2
    for w in range(windows):
        window = [a.token_bos(), *tokens[w * N_CTX + 1 : (w + 1) * N_CTX]]
        targets = np.asarray(window[first + 1 : N_CTX])
        logp_a = _scored(a, window)
        rows = np.arange(len(targets))
        nll_a.append(-logp_a[rows, targets])
        logp_b = _scored(b, window)
        nll_b.append(-logp_b[rows, targets])
        kls.append((np.exp(logp_a) * (logp_a - logp_b)).sum(axis=1))
    return {
        "eval_tokens": len(tokens),
        "scored_tokens": int(sum(len(x) for x in nll_a)),
        "source_ppl": float(np.exp(np.concatenate(nll_a).mean())),
        "result_ppl": float(np.exp(np.concatenate(nll_b).mean())),
        "kl_mean": float(np.concatenate(kls).mean()),
    }


def speed_and_golden(
    path: Path, text: str, goldens: list[dict[str, Any]], threads: int
) -> dict[str, Any]:
    llm = _llama(path, logits_all=False, threads=threads, n_ctx=1024)
    prompt = llm.tokenize(text.encode(), add_bos=True)[:PROMPT_TOKENS]
    prompt_tps, decode_tps = [], []
    for _ in range(3):
        llm.reset()
        started = time.perf_counter()
        llm.eval(prompt)
        prompt_tps.append(len(prompt) / (time.perf_counter() - started))
        started = time.perf_counter()
        for _ in range(DECODE_STEPS):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            llm.eval([token])
        decode_tps.append(DECODE_STEPS / (time.perf_counter() - started))
    golden = []
    for item in goldens:
        llm.reset()
        answer = llm.create_completion(
            item["prompt"], max_tokens=item["max_tokens"], temperature=0.0
        )
        text_out = answer["choices"][0]["text"]
        golden.append(
            {
                "name": item["name"],
                "passed": re.search(item["regex"], text_out) is not None,
                "answer": text_out,
            }
        )
    return {"prompt_tps": median(prompt_tps), "decode_tps": median(decode_tps), "golden": golden}


def ram_at_load(path: Path) -> int:
    """Bytes a fresh process's resident memory grows by when it loads the model into memory.
    (Not ru_maxrss: Linux carries it over fork and exec from the parent, here a big one.)"""
    code = (
        "import sys, llama_cpp, psutil\n"
        "me = psutil.Process()\n"
        "before = me.memory_info().rss\n"
        "model = llama_cpp.Llama(sys.argv[1], n_ctx=512, use_mmap=False, verbose=False)\n"
        "print(me.memory_info().rss - before)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return int(done.stdout.strip().splitlines()[-1])


def main() -> int:
    request = json.loads(Path(sys.argv[1]).read_text())
    source, result = Path(request["source"]), Path(request["result"])
    text = Path(request["text"]).read_text(encoding="utf-8")
    threads = int(request["threads"])
    report: dict[str, Any] = compare_texts(source, result, text, threads)
    for role, path in (("source", source), ("result", result)):
        figures = speed_and_golden(path, text, request["goldens"], threads)
        figures["ram_at_load_bytes"] = ram_at_load(path)
        figures["file_bytes"] = path.stat().st_size
        report[role] = figures
    Path(sys.argv[2]).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
