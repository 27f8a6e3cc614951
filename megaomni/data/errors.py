"""The one exception a sample can fail with, and the tally the loader keeps of them."""

from __future__ import annotations

import collections


class BadSample(Exception):
    """A sample that cannot be used. ``reason`` is a short fixed word the loader counts by:

    - members: ``missing_json``, ``missing_media`` (a gap in ``KEY.0.png, KEY.1.png, ...``),
      ``duplicate_member``, ``unsupported_media``;
    - text: ``bad_json``, ``bad_conversation``, ``no_answer`` (no or an empty assistant turn),
      ``reserved_token``, ``placeholder_mismatch``, ``modality_disabled``;
    - media: ``bad_image``, ``bad_audio``, ``audio_too_long``, ``bad_video`` (frames of
      different sizes); length: ``too_long``,
      ``over_budget`` (packing: larger than one micro-batch's ``data.max_*``);
    - shards (counted once a shard): ``corrupt_shard`` (its unreadable rest is skipped),
      ``empty_shard``.

    ``detail`` says what exactly was wrong."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


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
