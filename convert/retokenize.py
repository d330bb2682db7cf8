"""Give a converted GGUF the tokenizer of the GGUF its checkpoint came from:

    PYTHONPATH=<llama.cpp tools>/gguf-py python -m cellar.convert.retokenize CONVERTED ORIGINAL OUT

A checkpoint made from a GGUF (`cellar models convert --to hf`) has only a `tokenizer.json`.
llama.cpp's converter turns that into a BPE vocabulary, not the SentencePiece one the original
GGUF had, and a rebuilt `tokenizer.model` tokenizes runs of spaces differently (DESIGN.md). So
every `tokenizer.*` key is taken from the original GGUF instead; the weights and every other
key come from the conversion. Runs with llama.cpp's own gguf-py, so the constants match the
converter that wrote CONVERTED.
"""

from __future__ import annotations

import sys
from typing import Any

TOKENIZER = "tokenizer."
TOKEN_LIST = "tokenizer.ggml.tokens"


def _copy(writer: Any, field: Any, value_type: Any) -> None:
    kind = field.types[0]
    sub = field.types[-1] if kind == value_type.ARRAY else None
    writer.add_key_value(field.name, field.contents(), kind, sub)


def main() -> int:
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    converted_path, original_path, out_path = sys.argv[1:4]
    converted, original = GGUFReader(converted_path), GGUFReader(original_path)
    ours, theirs = converted.fields.get(TOKEN_LIST), original.fields.get(TOKEN_LIST)
    if ours is None or theirs is None:
        print("one of the files has no tokenizer.ggml.tokens", file=sys.stderr)
        return 1
    if len(ours.data) != len(theirs.data):
        print(
            f"the vocabularies differ: {len(ours.data)} tokens converted, {len(theirs.data)} in "
            f"{original_path}; the checkpoint's tokenizer is not the original's",
            file=sys.stderr,
        )
        return 1
    arch = converted.fields["general.architecture"].contents()
    writer = GGUFWriter(out_path, arch)
    for field in converted.fields.values():
        if field.name.startswith(("GGUF.", TOKENIZER)) or field.name == "general.architecture":
            continue
        _copy(writer, field, GGUFValueType)
    for field in original.fields.values():
        if field.name.startswith(TOKENIZER):
            _copy(writer, field, GGUFValueType)
    for tensor in converted.tensors:
        data = tensor.data
        writer.add_tensor_info(
            tensor.name, data.shape, data.dtype, data.nbytes, raw_dtype=tensor.tensor_type
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in converted.tensors:
        writer.write_tensor_data(tensor.data)
    writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
