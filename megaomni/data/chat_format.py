"""The tokens around each turn's content, whatever the tokenizer: a :class:`Frame` per turn.

Megaomni's sentencepiece tokenizer frames every turn alike (``<|user|>`` / ``<|assistant|>`` before,
``<|end|>`` after). A Hugging Face model's frames come from its chat template
(:func:`template_frames`): rendered with a plain-letter stand-in for each turn's content, the text
around the stand-ins is the frames' text. The template decides the frames of each sequence of roles
(the default system prompt before the first turn, Qwen3's empty ``<think>`` block before the last
answer), so the ids equal the template's rendering tokenized, with two exceptions: the frames and
the contents are encoded apart, so text that would merge across their boundary (a content that
starts with a line break, after the template's ``\\n``) is split there; and the content is kept
verbatim where a template would rewrite it (Qwen3 drops the reasoning of earlier answers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

STAND_IN = "MEGAOMNI{}CONTENT"  # letters and digits only: templates that strip or split content keep it whole


@dataclass(frozen=True)
class Frame:
    """Ids ``before`` and ``after`` one turn's content. An answer's content and the first
    ``trained`` ids of its ``after`` are learned (its end token; not the line break after it)."""

    before: tuple[int, ...]
    after: tuple[int, ...]
    trained: int


def _gaps(render: Callable[[list[dict]], str], roles: tuple[str, ...]) -> list[str]:
    """The text before the first turn's content, between each two, and after the last."""
    stand_ins = [STAND_IN.format(i) for i in range(len(roles))]
    text = render([{"role": role, "content": s} for role, s in zip(roles, stand_ins)])
    gaps = []
    for i, stand_in in enumerate(stand_ins):
        if text.count(stand_in) != 1:
            raise ValueError(f"it renders the content of turn {i} ({roles[i]}) {text.count(stand_in)} times, "
                             "not once verbatim")
        gap, _, text = text.partition(stand_in)
        gaps.append(gap)
    return [*gaps, text]


def turn_texts(render: Callable[[list[dict]], str], roles: tuple[str, ...]) -> list[tuple[str, str]]:
    """Per turn of a conversation of ``roles``, the template's text before and after its content.
    What follows a content up to the next one is split where the conversation would end there:
    its end (``<|im_end|>\\n``) is the turn's, the rest the next turn's."""
    gaps = _gaps(render, roles)
    befores, afters = [gaps[0]], []
    for i in range(1, len(roles)):
        end = _gaps(render, roles[:i])[-1]
        if not gaps[i].startswith(end):
            raise ValueError(f"a conversation that ends with turn {i - 1} ({roles[i - 1]}) ends in {end!r}, "
                             f"a longer one continues {gaps[i]!r}")
        afters.append(end)
        befores.append(gaps[i][len(end):])
    return list(zip(befores, [*afters, gaps[-1]]))


def template_frames(render: Callable[[list[dict]], str], roles: tuple[str, ...], encode: Callable[[str], list[int]],
                    special: set[int]) -> tuple[Frame, ...]:
    """The frames of a conversation of ``roles`` under a chat template: ``render`` (messages -> text),
    each frame's text ``encode`` d; an answer's ``after`` is trained up to its first ``special`` id
    (all of it without one). Raises ValueError saying why the template cannot be split so."""
    frames = []
    for before, after in turn_texts(render, roles):
        ids = encode(after)
        trained = next((i + 1 for i, token in enumerate(ids) if token in special), len(ids))
        frames.append(Frame(tuple(encode(before)), tuple(ids), trained))
    return tuple(frames)
