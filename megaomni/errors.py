"""The one exception a sample can fail with: raised by the shard reader, the media decoders, the
sample builder and the tokenizer it asks, counted by the loader (megaomni.data.skip_tally)."""

from __future__ import annotations


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
      ``empty_shard``;
    - the index (megaomni.data.index): ``index_mismatch`` (a sample decodes to other sizes than
      its index row says: the shard changed since).

    Most are found when a data set is indexed (text and media headers); media whose bytes are
    bad past their headers fail only when their micro-batch is decoded, and are counted then.

    ``detail`` says what exactly was wrong."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
