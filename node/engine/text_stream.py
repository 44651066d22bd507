"""Turns sampled token bytes into UTF-8 text deltas and finds stop strings.

A token may end inside a multi-byte character, and a stop string may span several tokens,
so text that could still be the start of a stop string is held back until it cannot.
"""

from __future__ import annotations

import codecs


class TextStream:
    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        # A held-back tail is a stop string's proper prefix, so it ends in one of these characters.
        self._tail_chars = frozenset(c for s in self._stop for c in s[:-1])
        self._held = ""
        self._out: list[str] = []  # everything emitted so far, joined only when asked
        self.stopped = False

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        return "".join(self._out)

    def feed(self, piece: bytes) -> str:
        """Add a token's bytes; returns the text that is now safe to emit."""
        if self.stopped:
            return ""
        text = self._decoder.decode(piece)
        if not self._stop:  # nothing to hold back for (the decoder keeps a split character)
            self._out.append(text)
            return text
        self._held += text
        # Earliest complete stop string wins; nothing from it onward is emitted.
        cut = min((i for i in (self._held.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            out = self._held[:cut]
            self._held = ""
            self.stopped = True
            self._out.append(out)
            return out
        keep = self._longest_stop_prefix_suffix(self._held)
        out = self._held[: len(self._held) - keep]
        self._held = self._held[len(self._held) - keep :]
        self._out.append(out)
        return out

    def flush(self) -> str:
        """At the end of generation: release what was held back (it matched no stop string)."""
        if self.stopped:
            return ""
        out = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        self._out.append(out)
        return out

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        if not text or text[-1] not in self._tail_chars:
            return 0
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
