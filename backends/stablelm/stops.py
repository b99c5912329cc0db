"""Stop strings: end a reply where a piece of text the caller names first appears.

OpenAI's ``stop`` (up to four strings) ends a completion before the first of them and leaves the
string itself out. Stop tokens cannot do this: a string like ``"\\nUser:"`` spans several tokens
and tokenises differently in context. So the decoded text is watched instead. A streamed piece
that ends with the first part of a stop string is held back until the next piece shows whether
the string completes, so a stream never shows text it later has to take back.

transformers' ``StopStringCriteria`` does the same inside ``generate``; our decode loop is our
own (``decode.py``), so the check is here, on the text the loop already decodes.
"""

from __future__ import annotations

from typing import Sequence


class StopStrings:
    """Feed it the decoded pieces in order; it gives back the text that is safe to show."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stop for stop in stops if stop)
        self.held = ""
        #: True once a stop string appeared; the text after it is never given out.
        self.hit = False

    def push(self, piece: str) -> str:
        """The text of ``piece`` (with any held text before it) that can be shown now."""
        if not self.stops:
            return piece
        if self.hit:
            return ""
        text = self.held + piece
        cut = min((at for at in (text.find(stop) for stop in self.stops) if at >= 0), default=-1)
        if cut >= 0:
            self.hit, self.held = True, ""
            return text[:cut]
        keep = self._partial_tail(text)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        """The held text, once the reply has ended without completing a stop string."""
        held, self.held = self.held, ""
        return "" if self.hit else held

    def _partial_tail(self, text: str) -> int:
        """Length of the longest end of ``text`` that is the start of a stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
