"""Every direct call into llama.cpp's C API for batched decoding, behind small Python types.

llama-cpp-python's high-level `Llama` runs one sequence at a time; batching many sequences needs
the low-level API: one context with `n_seq_max` sequences sharing a unified KV cache, one
`llama_batch` per decode step, and a sampler chain per sequence. The ctypes calls release the
GIL, so the decode thread never stalls the worker's event loop.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np
import numpy.typing as npt

from cellar.errors import CellarError


class NativeError(CellarError):
    """llama.cpp refused an operation; the message says which and why."""


@dataclass(frozen=True)
class ContextShape:
    n_ctx_per_seq: int
    n_parallel: int
    n_batch: int
    n_threads: int

    @property
    def n_ctx_total(self) -> int:
        return self.n_ctx_per_seq * self.n_parallel


class NativeModel:
    """Model weights loaded through the C API (freed with `close`)."""

    def __init__(self, path: Path, n_gpu_layers: int) -> None:
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        self.ptr = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            raise NativeError(f"llama.cpp could not load the model weights from {path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.ptr)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None


class NativeAdapter:
    """A GGUF LoRA adapter loaded for a model; applies to a whole context at a time."""

    def __init__(self, model: NativeModel, path: Path, scale: float) -> None:
        self.path = path
        self.scale = scale
        self.ptr = llama_cpp.llama_adapter_lora_init(model.ptr, str(path).encode())
        if not self.ptr:
            raise NativeError(
                f"llama.cpp could not load the LoRA adapter {path}: not a GGUF adapter, or made "
                "for another base model"
            )

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_adapter_lora_free(self.ptr)
            self.ptr = None


class BatchedContext:
    """One llama.cpp context holding `n_parallel` sequences, and the batch that feeds it."""

    def __init__(self, model: NativeModel, shape: ContextShape) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = shape.n_ctx_total
        params.n_batch = shape.n_batch
        params.n_ubatch = shape.n_batch
        params.n_seq_max = shape.n_parallel
        params.n_threads = shape.n_threads
        params.n_threads_batch = shape.n_threads
        params.kv_unified = True  # sequences share one pool of KV cells
        params.swa_full = True  # keep whole prompts for sliding-window layers: prefix reuse
        params.no_perf = True
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED  # ~4% faster on CPU
        self.shape = shape
        self.model = model
        self.ptr = llama_cpp.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise NativeError(
                f"llama.cpp could not create a context of {shape.n_ctx_total} tokens "
                f"({shape.n_parallel} sequences x {shape.n_ctx_per_seq}); lower n_ctx or n_parallel"
            )
        self._memory = llama_cpp.llama_get_memory(self.ptr)
        self._batch = llama_cpp.llama_batch_init(shape.n_batch, 0, shape.n_parallel)
        self.n_tokens = 0
        self.adapter: NativeAdapter | None = None

    def use_adapter(self, adapter: NativeAdapter | None) -> bool:
        """Decode with `adapter` (None: the base model) from now on; True if it changed."""
        if adapter is self.adapter:
            return False
        if adapter is None:
            status = llama_cpp.llama_set_adapters_lora(self.ptr, None, 0, None)
        else:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter.ptr)
            scales = (ctypes.c_float * 1)(adapter.scale)
            status = llama_cpp.llama_set_adapters_lora(self.ptr, adapters, 1, scales)
        if status != 0:
            raise NativeError(f"llama_set_adapters_lora failed with status {status}")
        self.adapter = adapter
        return True

    def clear_batch(self) -> None:
        self.n_tokens = 0

    @property
    def batch_room(self) -> int:
        return self.shape.n_batch - self.n_tokens

    def add(
        self, token: int, pos: int, seq: int, want_logits: bool, also: Sequence[int] = ()
    ) -> int:
        """Append one token of sequence `seq` at position `pos`, and of the sequences `also`
        at the same position (one KV cell that they all hold); returns its batch index."""
        i = self.n_tokens
        batch = self._batch
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1 + len(also)
        ids = batch.seq_id[i]
        ids[0] = seq
        for k, other in enumerate(also, 1):
            ids[k] = other
        batch.logits[i] = want_logits
        self.n_tokens = i + 1
        return i

    def decode(self) -> None:
        self._batch.n_tokens = self.n_tokens
        status = llama_cpp.llama_decode(self.ptr, self._batch)
        if status != 0:
            raise NativeError(f"llama_decode failed with status {status}")

    def synchronize(self) -> None:
        """Wait for the last decode and put its output rows in their final order, so that
        reading them from several threads at once only reads."""
        llama_cpp.llama_synchronize(self.ptr)
        llama_cpp.llama_get_logits(self.ptr)

    def logits(self, index: int) -> npt.NDArray[np.float32]:
        """The logits of batch row `index` (a view; valid until the next decode)."""
        ptr = llama_cpp.llama_get_logits_ith(self.ptr, index)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))

    def forget(self, seq: int, from_pos: int = 0) -> None:
        """Drop the KV cells of `seq` from position `from_pos` on."""
        if not llama_cpp.llama_memory_seq_rm(self._memory, seq, from_pos, -1):
            raise NativeError(f"could not drop KV cells of sequence {seq} from {from_pos}")

    def share(self, source: int, target: int, upto: int) -> None:
        """Give sequence `target` the KV cells of `source` at positions 0..upto-1 (in the
        unified cache the cells are shared, not copied). `target` must hold none there."""
        llama_cpp.llama_memory_seq_cp(self._memory, source, target, 0, upto)

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self.ptr)
            self.ptr = None


TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
assert TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)


class Candidates:
    """A `llama_token_data_array` over the whole vocabulary, refilled from a row of logits."""

    def __init__(self, n_vocab: int) -> None:
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._data = np.zeros(n_vocab, dtype=TOKEN_DATA)
        pointer = self._data.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
        self.array = llama_cpp.llama_token_data_array(pointer, n_vocab, -1, False)

    def fill(self, logits: npt.NDArray[np.float32]) -> None:
        self._data["id"] = self._ids
        self._data["logit"] = logits
        self._data["p"] = 0.0
        self.array.size = len(self._ids)
        self.array.selected = -1
        self.array.sorted = False

    def apply(self, sampler: ctypes.c_void_p | int | None) -> None:
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(self.array))

    def selected(self) -> int:
        return int(self._data["id"][self.array.selected])


def grammar_allows(grammar: ctypes.c_void_p | int | None, token: int) -> bool:
    """Whether the grammar, in its current state, accepts `token` next."""
    one = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 1.0, 0.0))
    array = llama_cpp.llama_token_data_array(one, 1, -1, False)
    llama_cpp.llama_sampler_apply(grammar, ctypes.byref(array))
    return bool(np.isfinite(one[0].logit))


class SamplerChain:
    """One sequence's sampler chain: its own penalties history, grammar state and RNG."""

    def __init__(self) -> None:
        params = llama_cpp.llama_sampler_chain_default_params()
        params.no_perf = True
        self.ptr = llama_cpp.llama_sampler_chain_init(params)

    def add(self, sampler: ctypes.c_void_p | int | None) -> None:
        if not sampler:
            raise NativeError("llama.cpp could not create a sampler (is the grammar valid?)")
        llama_cpp.llama_sampler_chain_add(self.ptr, sampler)

    def sample(self, context: BatchedContext, index: int) -> int:
        """Sample (and accept) the next token from batch row `index`."""
        return int(llama_cpp.llama_sampler_sample(self.ptr, context.ptr, index))

    def accept(self, token: int) -> None:
        llama_cpp.llama_sampler_accept(self.ptr, token)

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_sampler_free(self.ptr)
            self.ptr = None


class EmbeddingContext:
    """A llama.cpp context that pools one vector per sequence (an embedding model), and the
    batch that feeds it: up to `n_seqs` whole inputs of at most `n_tokens` tokens together."""

    def __init__(self, model: NativeModel, n_tokens: int, n_seqs: int, n_threads: int) -> None:
        params = llama_cpp.llama_context_default_params()
        params.embeddings = True
        params.n_ctx = n_tokens
        params.n_batch = n_tokens
        params.n_ubatch = n_tokens  # a bidirectional model sees each input whole in one ubatch
        params.n_seq_max = n_seqs
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.no_perf = True
        self.model = model
        self.n_tokens_max = n_tokens
        self.n_seqs_max = n_seqs
        self.ptr = llama_cpp.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise NativeError(f"llama.cpp could not create an embedding context of {n_tokens}")
        self.pooling = int(llama_cpp.llama_pooling_type(self.ptr))
        self.n_embd = int(llama_cpp.llama_model_n_embd(model.ptr))
        self._memory = llama_cpp.llama_get_memory(self.ptr)
        self._batch = llama_cpp.llama_batch_init(n_tokens, 0, 1)
        self.n_tokens = 0
        self.n_seqs = 0

    @property
    def pooled(self) -> bool:
        """Whether the model pools one vector per input (mean, CLS or last token)."""
        return self.pooling in (
            llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            llama_cpp.LLAMA_POOLING_TYPE_CLS,
            llama_cpp.LLAMA_POOLING_TYPE_LAST,
        )

    def fits(self, n_tokens: int) -> bool:
        return self.n_seqs < self.n_seqs_max and self.n_tokens + n_tokens <= self.n_tokens_max

    def add(self, tokens: Sequence[int]) -> int:
        """Append one whole input as the next sequence; returns its sequence id."""
        seq, batch = self.n_seqs, self._batch
        for pos, token in enumerate(tokens):
            i = self.n_tokens + pos
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = True
        self.n_tokens += len(tokens)
        self.n_seqs += 1
        return seq

    def run(self) -> list[npt.NDArray[np.float32]]:
        """Encode the batch; the pooled vector of each sequence, in order. Empties the batch."""
        self._batch.n_tokens = self.n_tokens
        if self._memory:  # a causal model keeps KV: decode, then forget it
            status = llama_cpp.llama_decode(self.ptr, self._batch)
        else:
            status = llama_cpp.llama_encode(self.ptr, self._batch)
        try:
            if status != 0:
                raise NativeError(f"llama.cpp failed to encode the batch (status {status})")
            vectors = []
            for seq in range(self.n_seqs):
                ptr = llama_cpp.llama_get_embeddings_seq(self.ptr, seq)
                if not ptr:
                    raise NativeError(f"llama.cpp gave no pooled vector for sequence {seq}")
                vectors.append(np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).copy())
            return vectors
        finally:
            if self._memory:
                llama_cpp.llama_memory_clear(self._memory, True)
            self.n_tokens = 0
            self.n_seqs = 0

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self.ptr)
            self.ptr = None
