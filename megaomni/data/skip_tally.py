"""The tally the loader keeps of skipped samples, by reason."""

from __future__ import annotations

import collections

from megaomni.errors import BadSample


class SkipTally:
    """Skips counted by reason, with the first case of each (where and why): enough for a user
    to find the bad file from one log line."""

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.first: dict[str, str] = {}

    def add(self, where: str, error: BadSample) -> None:
        self.counts[error.reason] += 1
        self.first.setdefault(error.reason, f"{where}: {error.detail}" if error.detail else where)

    def summary(self) -> str:
        """``reason count (first WHERE: DETAIL); ...`` in reason order; ``""`` when nothing was skipped."""
        return "; ".join(f"{reason} {n} (first {self.first[reason]})" for reason, n in sorted(self.counts.items()))
