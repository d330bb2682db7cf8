"""One llama.cpp quantization in a process of its own:

    python -m cellar.quantize.native SRC DST FTYPE THREADS ALLOW_REQUANTIZE

The C library writes a line per tensor on stdout/stderr; the parent sends both to a log file and
reads the progress from it. A process of its own can also be stopped at once on Ctrl-C.
"""

from __future__ import annotations

import sys


def main() -> int:
    import llama_cpp

    src, dst, ftype, threads, allow = sys.argv[1:6]
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = int(threads)
    params.ftype = int(ftype)
    params.allow_requantize = allow == "1"
    status = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
    if status != 0:
        print(f"llama_model_quantize failed with status {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
