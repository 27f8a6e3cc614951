"""The one exception a sample can fail with: the loader skips it and counts it by reason."""

from __future__ import annotations


class BadSample(Exception):
    """A sample that cannot be used. ``reason`` is a short fixed word the loader counts by
    (``bad_json``, ``bad_image``, ``bad_audio``, ``placeholder_mismatch``, ``too_long``, ...);
    ``detail`` says what exactly was wrong."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
