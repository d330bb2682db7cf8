"""bitsandbytes checkpoints (`bnb-int8`, `bnb-nf4`) from a Hugging Face checkpoint, for vLLM
(`quantization: bitsandbytes`), and their report measured with transformers.

Both steps run in child processes (torch and the model stay out of the CLI):

    python -m cellar.quantize.bnb make SRC_DIR DST_DIR TARGET
    python -m cellar.quantize.bnb evaluate REQUEST.json OUT.json

The report has the same fields as the GGUF one (quantize/evaluate.py) and the same method:
windows of 512 tokens starting with BOS, second halves scored, KL(source || result) per scored
position, greedy golden prompts, prompt and decode tokens/s, RAM at load.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

N_CTX = 512
PROMPT_TOKENS = 256
DECODE_STEPS = 32
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "generation_config.json",
    "chat_template.jinja",
)


def _config(target: str) -> Any:
    import torch
    from transformers import BitsAndBytesConfig

    if target == "bnb-int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )


def make(src: Path, dst: Path, target: str) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        src, quantization_config=_config(target), device_map="cpu"
    )
    model.save_pretrained(dst)
    for name in TOKENIZER_FILES:  # the source's own tokenizer, BOS setting included
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def _load(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, device_map="cpu")
    model.eval()
    return model


def _scored(model: Any, window: list[int]) -> Any:
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([window])).logits[0, N_CTX // 2 : N_CTX - 1].float()
    return torch.log_softmax(logits, dim=-1)


def compare_texts(source: Path, result: Path, text: str) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    tokens = tokenizer(text, add_special_tokens=False).input_ids
    windows = len(tokens) // N_CTX
    if windows < 1:
        raise ValueError(f"the evaluation text has {len(tokens)} tokens; it needs {N_CTX} or more")
    a, b = _load(source), _load(result)
    nll_a, nll_b, kls = [], [], []
    for w in range(windows):
        window = [tokenizer.bos_token_id, *tokens[w * N_CTX + 1 : (w + 1) * N_CTX]]
        targets = torch.tensor(window[N_CTX // 2 + 1 : N_CTX])
        logp_a, logp_b = _scored(a, window), _scored(b, window)
        rows = torch.arange(len(targets))
        nll_a.append(-logp_a[rows, targets])
        nll_b.append(-logp_b[rows, targets])
        kls.append((logp_a.exp() * (logp_a - logp_b)).sum(dim=-1))
    return {
        "eval_tokens": len(tokens),
        "scored_tokens": int(sum(len(x) for x in nll_a)),
        "source_ppl": float(torch.cat(nll_a).mean().exp()),
        "result_ppl": float(torch.cat(nll_b).mean().exp()),
        "kl_mean": float(torch.cat(kls).mean()),
    }


def speed_and_golden(path: Path, text: str, goldens: list[dict[str, Any]]) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = _load(path)
    prompt = torch.tensor([tokenizer(text).input_ids[:PROMPT_TOKENS]])
    prompt_tps, decode_tps = [], []
    with torch.no_grad():
        for _ in range(3):
            started = time.perf_counter()
            out = model(prompt, use_cache=True)
            prompt_tps.append(prompt.shape[1] / (time.perf_counter() - started))
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            started = time.perf_counter()
            for _ in range(DECODE_STEPS):
                out = model(token, past_key_values=cache, use_cache=True)
                cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            decode_tps.append(DECODE_STEPS / (time.perf_counter() - started))
        golden = []
        for item in goldens:
            ids = tokenizer(item["prompt"], return_tensors="pt").input_ids
            out = model.generate(ids, max_new_tokens=item["max_tokens"], do_sample=False)
            answer = str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
            golden.append(
                {
                    "name": item["name"],
                    "passed": re.search(item["regex"], answer) is not None,
                    "answer": answer,
                }
            )
    return {"prompt_tps": median(prompt_tps), "decode_tps": median(decode_tps), "golden": golden}


def ram_at_load(path: Path) -> int:
    code = (
        "import sys, psutil\n"
        "from transformers import AutoModelForCausalLM\n"
        "me = psutil.Process()\n"
        "before = me.memory_info().rss\n"
        "model = AutoModelForCausalLM.from_pretrained(sys.argv[1], device_map='cpu')\n"
        "print(me.memory_info().rss - before)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip().splitlines()[-1])


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def evaluate(request: dict[str, Any]) -> dict[str, Any]:
    source, result = Path(request["source"]), Path(request["result"])
    text = Path(request["text"]).read_text(encoding="utf-8")
    report: dict[str, Any] = compare_texts(source, result, text)
    for role, path in (("source", source), ("result", result)):
        figures = speed_and_golden(path, text, request["goldens"])
        figures["ram_at_load_bytes"] = ram_at_load(path)
        figures["file_bytes"] = _size(path)
        report[role] = figures
    return report


def main() -> int:
    command, first, second = sys.argv[1:4]
    if command == "make":
        make(Path(first), Path(second), sys.argv[4])
        return 0
    request = json.loads(Path(first).read_text())
    Path(second).write_text(json.dumps(evaluate(request), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
