"""Run inside `unshare -n` by test_offline: start a gateway and ask it one question.

    python -m tests.offline_probe WORKDIR STORE
Exit 0 and print the answer when the whole path works with no network at all.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.gateway import MODEL, start_gateway


def main() -> int:
    work, store = Path(sys.argv[1]), Path(sys.argv[2])
    with start_gateway(work, store) as gw:
        reply = gw.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=8
        )
    print("answer:", reply.choices[0].message.content)
    return 0 if reply.choices[0].message.content else 1


if __name__ == "__main__":
    sys.exit(main())
