"""GGUF -> Hugging Face checkpoint, so vLLM (and the training tools) can use a GGUF model.

transformers reads the GGUF and dequantizes it to float32: the checkpoint holds exactly the
weights llama.cpp computes with. Two facts about the bundled Gemma GGUF shape this code:
- transformers marks the loaded model as GGUF-quantized, and `save_pretrained` refuses such a
  model, so the quantization config is dropped first (the weights are already plain tensors);
- the tokenizer it builds from the GGUF adds no BOS, while llama.cpp adds one when the GGUF
  says so (`tokenizer.ggml.add_bos_token`). Gemma without BOS degrades badly, so the BOS
  setting is carried over explicitly.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from cellar.errors import StoreError
from cellar.gguf import GGUFError, read_metadata
from cellar.store import Lineage, Manifest, ModelStore

METHOD_GGUF_TO_HF = "gguf-to-hf"
_TOOLS = ("transformers", "torch", "gguf", "accelerate")

Step = Callable[[str], None]
"""Told what the conversion is doing now (it has no finer progress to give)."""


def tool_versions() -> dict[str, str]:
    found = {}
    for name in _TOOLS:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


def _adds_bos(gguf: Path) -> bool:
    try:
        meta, _ = read_metadata(gguf)
    except (GGUFError, OSError) as exc:
        raise StoreError(f"{gguf}: cannot read the GGUF header: {exc}") from None
    value = meta.get("tokenizer.ggml.add_bos_token", True)
    return bool(value)


def gguf_to_hf(
    gguf: Path, out: Path, add_bos: bool, step: Step = lambda _: None, verbose: bool = False
) -> None:
    """Write a Hugging Face checkpoint (config, safetensors, tokenizer) of `gguf` into `out`;
    its tokenizer adds BOS when `add_bos` (the GGUF's own setting, see `_adds_bos`)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise StoreError(
            f"converting needs transformers, torch, accelerate and gguf ({exc}); "
            "install Cellar with its `hf` extra"
        ) from None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI shows its own status
    folder, name = str(gguf.parent), gguf.name
    step("reading the tokenizer from the GGUF")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    step("dequantizing the weights (transformers' GGUF loader)")
    quiet = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # its own progress bar; the CLI shows the step
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    finally:
        if quiet is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = quiet
    # The weights are plain float tensors now; the GGUF marker only blocks save_pretrained.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    step("writing safetensors")
    model.save_pretrained(out)
    tokenizer.add_bos_token = add_bos  # type: ignore[misc]  # it has a setter (typed as read-only)
    tokenizer.save_pretrained(out)
    _pin_bos(out / "tokenizer_config.json", add_bos)
    step("listing the end-of-generation tokens")
    with native_log(verbose):
        eog = end_of_generation(gguf)
    _pin_eog(out / "generation_config.json", eog)


@contextmanager
def native_log(verbose: bool) -> Iterator[None]:
    """llama.cpp's C library writes a line per metadata key and tensor (`llama_model_loader:
    ...`, `print_info: ...`) to stderr when it opens a model: keep it off the terminal unless
    `verbose`. It writes to file descriptor 2 itself, so that is what is pointed elsewhere."""
    if verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def end_of_generation(gguf: Path) -> list[int]:
    """Every token llama.cpp ends a generation at (EOS, and end-of-turn markers such as Gemma's
    <end_of_turn>), read from the GGUF's vocabulary by llama.cpp itself."""
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
    if not model:
        raise StoreError(f"{gguf}: llama.cpp cannot read its vocabulary")
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        count = llama_cpp.llama_vocab_n_tokens(vocab)
        return [token for token in range(count) if llama_cpp.llama_vocab_is_eog(vocab, token)]
    finally:
        llama_cpp.llama_model_free(model)


def _pin_eog(path: Path, tokens: list[int]) -> None:
    """`eos_token_id` as the list llama.cpp stops at, as Google's own Gemma 3 checkpoints do;
    the vLLM worker sends it as `stop_token_ids`, so both engines stop at the same tokens."""
    if not tokens:
        return
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    config["eos_token_id"] = tokens
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _pin_bos(path: Path, add_bos: bool) -> None:
    """Write `add_bos_token` into the tokenizer config: every reader must agree with llama.cpp."""
    config = json.loads(path.read_text(encoding="utf-8"))
    config["add_bos_token"] = add_bos
    config.pop("local_files_only", None)
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def convert_to_hf(
    store: ModelStore, name: str, new_name: str, step: Step, verbose: bool = False
) -> Manifest:
    """Convert the store's GGUF model `name` into an HF checkpoint stored as `new_name`
    (`verbose`: let llama.cpp's own log through to stderr).

    Converting the same parent again under the same name returns the existing model.
    """
    parent = store.get(name)
    if parent.format != "gguf":
        raise StoreError(f"model {name!r} is a {parent.format} checkpoint already, not a GGUF")
    for existing in store.children(parent.sha256):
        if existing.name == new_name and existing.format == "hf":
            return existing
    step(f"checking {name}")
    store.verify_manifest(parent)
    gguf = store.file_of(parent)
    add_bos = _adds_bos(gguf)
    lineage = Lineage(
        parent=parent.name,
        parent_sha256=parent.sha256,
        method=METHOD_GGUF_TO_HF,
        parameters={"dtype": "float32", "add_bos_token": add_bos},
        tools=tool_versions(),
    )
    return store.add(
        new_name,
        "hf",
        lambda out: gguf_to_hf(gguf, out, add_bos, step, verbose),
        fmt="hf",
        source=f"{METHOD_GGUF_TO_HF}:{parent.name}",
        lineage=lineage,
    )
