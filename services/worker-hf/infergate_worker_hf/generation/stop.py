"""Stop strings: where the first one starts, and how much text to hold
back in a stream because it could be the start of one."""

from __future__ import annotations


class StopStrings:
    def __init__(self, stops: list[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self.longest = max((len(stop) for stop in self.stops), default=0)

    def __bool__(self) -> bool:
        return bool(self.stops)

    def find(self, text: str, new_from: int) -> int | None:
        """Index of the earliest stop string in ``text`` that ends at or after
        ``new_from`` (text before it was already searched), or None."""
        if not self.stops:
            return None
        start = max(0, new_from - self.longest + 1)
        found = [index for stop in self.stops if (index := text.find(stop, start)) >= 0]
        return min(found) if found else None

    def held_back(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that begins a stop string."""
        for size in range(min(self.longest - 1, len(text)), 0, -1):
            suffix = text[-size:]
            if any(stop.startswith(suffix) for stop in self.stops):
                return size
        return 0
