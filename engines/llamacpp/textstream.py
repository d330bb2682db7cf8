"""Generated token bytes -> text that is safe to send.

Never emits half a UTF-8 character (a character may span tokens), never emits text that could
still turn out to be the start of a stop string, and cuts the output at the first stop string.
"""

from __future__ import annotations

import codecs


class TextStream:
    def __init__(self, stops: list[str] | tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in stops if s]
        self._pending = ""
        self.stopped = False
        """True once a stop string appeared; nothing after it is ever emitted."""

    def push(self, piece: bytes) -> str:
        """Add one token's bytes; return the text that may be sent now."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(piece)
        cut = self._first_stop()
        if cut is not None:
            out, self._pending, self.stopped = self._pending[:cut], "", True
            return out
        keep = self._partial_stop_len()
        split = len(self._pending) - keep
        out, self._pending = self._pending[:split], self._pending[split:]
        return out

    def flush(self) -> str:
        """The rest, at the end of generation (a held-back partial stop string is real text)."""
        if self.stopped:
            return ""
        out = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return out

    def _first_stop(self) -> int | None:
        hits = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
        return min(hits) if hits else None

    def _partial_stop_len(self) -> int:
        """Length of the longest tail of the pending text that begins some stop string. Only
        the places where a stop's first character occurs are tried, so a long stop string
        costs little per token."""
        pending, best = self._pending, 0
        for stop in self._stops:
            at = pending.find(stop[0], max(0, len(pending) - len(stop) + 1))
            while at != -1 and len(pending) - at > best:
                if stop.startswith(pending[at:]):
                    best = len(pending) - at
                    break
                at = pending.find(stop[0], at + 1)
        return best
