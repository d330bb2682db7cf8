"""A worker that prints a line longer than the pipe reader's buffer (64 KiB) does not kill the
gateway's log pump; the pump keeps reading, so the worker never blocks on a full pipe."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from cellar.engines.channel import Channel
from cellar.engines.llamacpp.launcher import LlamaCppDialect
from cellar.engines.process import LOG_LINE_MAX, WorkerProcess, free_port

CHATTY = """
import sys, time
sys.stdout.write("x" * 300_000 + "\\n")
for i in range(20_000):
    sys.stdout.write(f"line {i} " + "y" * 100 + "\\n")
sys.stdout.write("last line\\n")
sys.stdout.flush()
open(sys.argv[1], "w").close()
time.sleep(60)
"""


def test_a_huge_log_line_does_not_block_the_worker(tmp_path: Path) -> None:
    marker = tmp_path / "wrote-everything"

    async def scenario() -> list[str]:
        argv = [sys.executable, "-c", CHATTY, str(marker)]
        channel = Channel.tcp(free_port(), proves=True)
        worker = WorkerProcess("chatty", argv, channel=channel, dialect=LlamaCppDialect())
        await worker.start()
        try:
            for _ in range(300):
                if marker.exists():
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            return list(worker._tail)
        finally:
            await worker.stop()

    tail = asyncio.run(scenario())
    assert marker.exists(), "the worker blocked writing its log"
    assert tail[-1] == "last line"
    assert all(len(line) <= LOG_LINE_MAX + 40 for line in tail)
