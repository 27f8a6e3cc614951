"""A video with its audio track, interleaved by time (Qwen2.5-Omni's ``use_audio_in_video``).

How a sample says it: with ``data.audio_in_video``, a ``<video>`` placeholder written right before
an ``<audio>`` one (``<video><audio>``, nothing between them) is one video whose audio track is
that clip (the sample's members as ever: the video's frames and the clip). A ``<video>`` or an
``<audio>`` alone, or the option off, is what it always was.

Its tokens, as Qwen2.5-Omni's processor lays them out: the video's start tokens, the clip's, then
chunk by chunk the video's pads whose temporal position falls in the chunk and the clip's whose
index does (a chunk: ``model.vision.tokens_per_second * seconds_per_chunk`` positions; a clip's
tokens count one position each), the clip's end tokens, the video's. (The processor places a
video's tokens by float64 times, ``get_rope_index`` by its truncated float32 positions; this takes
the positions, which the model sees: the two differ only for a time within rounding of a chunk's edge.)

Its multimodal RoPE positions, as ``get_rope_index(use_audio_in_video=True)`` makes them: every
start token at the text's position p; the video's grid (``Vision.positions``) and the clip's
(one per token on all three axes), both from p + 1, in the chunks' order; every end token one
past the largest position of the last chunk, not of the whole span (an early chunk of a wide
frame may reach further), and the text after one past that. Hugging Face takes one mode per
call, every video with a track or none; here each ``<video>`` is taken as it is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megaomni.checks import require
from megaomni.media.audio import AUDIO, AUDIO_MODALITY
from megaomni.media.modality import MediaItem
from megaomni.media.vision import VIDEO, VISION

NAME = "audio_in_video"  # the run's name (megaomni/data/sample.py: (name, start, end, items))


@dataclass
class Track:
    """A video and its audio track, as one run of a sample: the items of each modality, the
    chunks' pads in order (modality, first, end: a slice of that modality's tokens), and how many
    start and end tokens frame them."""

    media: dict[str, list[MediaItem]]
    pieces: list[tuple[str, int, int]]
    before: int
    after: int


def pair(pieces: list) -> list:
    """A turn's encoded pieces (ids, placeholders) with each ``<video>`` right before an
    ``<audio>`` as one piece ``(<video>, <audio>)``."""
    out: list = []
    for piece in pieces:
        if piece == AUDIO and out and out[-1] == VIDEO:
            out[-1] = (VIDEO, AUDIO)
        else:
            out.append(piece)
    return out


def chunk_bounds(times: list[int], size: int) -> list[tuple[int, int]]:
    """``times`` (non-decreasing) in slices, a new one where a time reaches the next multiple of
    ``size``: Hugging Face's ``get_chunked_index``, one step per token (a jump over several
    multiples opens one slice per token until it has caught up, as there)."""
    bounds, start, chunk = [], 0, 1
    for i, time in enumerate(times):
        if time >= chunk * size:
            bounds.append((start, i))
            start, chunk = i, chunk + 1
    return bounds + [(start, len(times))]


def _grids(track: Track, start: int, cfg) -> dict[str, torch.Tensor]:
    return {VISION.name: VISION.positions(track.media[VISION.name], start, cfg),
            AUDIO_MODALITY.name: AUDIO_MODALITY.positions(track.media[AUDIO_MODALITY.name], start, cfg)}


def lay_out(media: list[tuple[str, list[MediaItem]]], expansions: list, cfg) -> tuple[list[int], Track]:
    """The ids and the run of a video and its clip: ``media`` and ``expansions`` (the tokenizer's
    :class:`~megaomni.data.media_tokens.Expansion`), the video's then the clip's."""
    (_, video), (_, clip) = media
    (v, a), names = expansions, (VISION.name, AUDIO_MODALITY.name)
    track = Track(dict(zip(names, (video, clip))), [], len(v.before) + len(a.before), len(a.after) + len(v.after))
    size = cfg.model.vision.tokens_per_second * cfg.model.vision.seconds_per_chunk
    chunks = [chunk_bounds(_grids(track, 0, cfg)[name][0].tolist(), size) for name in names]
    for j in range(max(map(len, chunks))):  # the video's j-th chunk, then the clip's
        track.pieces += [(name, *c[j]) for name, c in zip(names, chunks) if j < len(c) and c[j][1] > c[j][0]]
    pads = dict(zip(names, (v.pad, a.pad)))
    middle = [pads[name] for name, first, end in track.pieces for _ in range(end - first)]
    return [*v.before, *a.before, *middle, *a.after, *v.after], track


def positions(track: Track, start: int, cfg) -> tuple[torch.Tensor, int]:
    """The run's ``[3, tokens]`` positions, its start tokens at ``start``, and the position of
    the text after it."""
    base = start + bool(track.before)
    grids = _grids(track, base, cfg)
    chunks = [grids[name][:, first:end] for name, first, end in track.pieces]
    end = int(chunks[-1].max()) + 1 if chunks else base
    parts = [torch.full((3, track.before), start), *chunks, torch.full((3, track.after), end)]
    return torch.cat(parts, dim=1), end + bool(track.after)


def check(cfg) -> None:
    vision = cfg.model.vision
    require(not cfg.data.audio_in_video or (vision.tokens_per_second > 0 and vision.seconds_per_chunk > 0),
            "data.audio_in_video=true: needs model.vision.tokens_per_second and seconds_per_chunk > 0 (chunks of "
            f"their product of positions; they are {vision.tokens_per_second} and {vision.seconds_per_chunk})")
