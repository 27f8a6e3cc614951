"""Turn LLaVA-style JSON (with media folders) and plain-text JSONL into the loader's tar shards.

    python tools/prepare_data.py --out DIR [--llava FILE ...] [--text FILE ...] [--media-root DIR]
        [--text-key text] [--prefix data] [--samples-per-shard 1000] [--max-shard-bytes SIZE]
        [--train-tokenizer VOCAB [--byte-fallback] | --tokenizer HF_DIR] [--overwrite]
        [--index-config RECIPE.yaml]

writes ``DIR/PREFIX-000000.tar``, ... in the format of README "Data format" (and
``DIR/tokenizer.model`` with ``--train-tokenizer``), showing progress on stderr; with
``--index-config`` it then indexes DIR for that recipe (tools/index_data.py).

``--tokenizer HF_DIR`` trains with a Hugging Face model's own tokenizer instead: its files
(``tokenizer.json``, ``tokenizer_config.json``, the chat template, ...) are copied into DIR, where
``data.tokenizer`` finds them by default, and a record that does not tokenize with it (content
holding one of its special tokens, a placeholder it has no media tokens for) is skipped.

LLaVA records (a JSON list, or JSONL: an object a line) look like ``{"id": ..., "image": PATH or
[PATH, ...], "audio": PATH or [...], "video": [FRAME, ...], "conversations": [{"from": "human",
"value": "<image>\\nWhat is it?"}, {"from": "gpt", "value": "..."}]}``, paths relative to
``--media-root`` (default: the JSON file's folder). Conventions:

- Roles: ``human``/``user`` -> user, ``gpt``/``assistant`` -> assistant, ``system`` -> user: the
  format has no system role, and a user turn is context without loss, as a system prompt is.
- Media of a kind with no placeholder in the text get theirs prepended to the first human turn
  (``"<image>\\n" + text``, the LLaVA convention; ``<audio>`` alike; a new first user turn where
  there is no human turn); otherwise placeholder and file counts must match, and no placeholder
  may stand in an answer.
- Video: a list of frame images only (one video a record), its frames written as
  ``KEY.video.0.png``, ``KEY.video.1.png``, ... in list order; its ``<video>`` placeholder stays.
  A video file is skipped (``unsupported_media``): nothing here decodes video.
- PNG, JPEG, 16-bit WAV and FLAC are copied byte for byte (the loader reads them); other images
  Pillow opens are re-encoded to PNG (alpha composited on white, 16-bit samples by their high
  byte: megaomni/media/image_modes.py), 8/24/32-bit WAV to 16-bit; other audio is skipped. Images
  and WAV are decoded in full as the loader decodes them, so a damaged file is skipped here
  (``bad_image``, ``bad_audio``); FLAC is checked by its header only.

Plain text records (``{"text": ...}``; ``--text-key``) become one assistant turn. The loader
trains on assistant turns only (``megaomni/data/sample.py``); a lone one puts every text token,
and the closing ``<|end|>`` (a Hugging Face tokenizer's: ``<|im_end|>``), under the loss. Texts
over ``data.seq_length`` tokens are not split here: the loader skips them (``too_long``).

A bad record or media file is skipped, never fatal, and counted by reason (``bad_json``, also
for a lone surrogate in the text; ``missing_media``, ``bad_image``, ``bad_audio``,
``placeholder_mismatch``, ...; the conversation also passes the loader's own check); the summary
gives each reason's count and first case (``FILE:LINE`` or ``FILE[INDEX]``, the record's id, the
media file). Exit status: 0, or 1 when nothing was written, 2 for
an unusable input or option (a missing file; shards already in DIR without --overwrite). The same
inputs and options give byte-identical shards: keys are ``NNNNNNNN_ID`` (a running number and the
record's id cut to ``[A-Za-z0-9_-]``: no dot, which ends a key in a shard), members carry no times.
"""

from __future__ import annotations

import argparse
import codecs
import collections
import contextlib
import glob
import io
import json
import math
import os
import re
import reprlib
import shutil
import sys
import tarfile
import time
import wave
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, TextIO

import numpy as np
from PIL import Image

from megaomni.data.sample import parse_conversation, text_tokens
from megaomni.data.tokenizer import Tokenizer, load_tokenizer, train_tokenizer
from megaomni.errors import BadSample
from megaomni.media.audio import AUDIO, AUDIO_EXTS
from megaomni.media.images import decode_image
from megaomni.media.sounds import read_wav
from megaomni.media.vision import IMAGE, VIDEO, VIDEO_FIELD

# --help's epilog: what the input records look like (the module docstring has the conventions).
RECORD_LAYOUT = """\
--llava records: a JSON list of objects, or JSONL (one object a line), e.g.
  {"id": "sample-1", "image": "images/cat.jpg",
   "conversations": [{"from": "human", "value": "<image>\\nWhat is on the mat?"},
                     {"from": "gpt", "value": "A cat."}]}
  "image" and "audio" (.wav, .flac): a path or a list of paths; "video": a list of frame images;
  paths relative to --media-root (default: the JSON file's folder). "from": human, user, gpt,
  assistant or system ("role"/"content" work too). One <image> / <audio> / <video> placeholder a
  file; missing ones are put before the first human turn.
--text records: JSONL, e.g. {"id": "doc-1", "text": "Any document."} (the field: --text-key).
A bad record or media file is skipped, never fatal; the summary counts skips by reason, each
with its first case (file:line and id).
"""
ROLES = {"human": "user", "user": "user", "system": "user", "gpt": "assistant", "assistant": "assistant"}
IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpg"}  # Pillow format -> a member extension the reader takes
TOKENIZER_MAX_TEXTS = 1_000_000  # turn texts the tokenizer trains on: the first ones written
# A Hugging Face tokenizer's files (tokenizer.model, a sentencepiece model some folders also hold,
# is left out: data.tokenizer would default to it).
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                      "chat_template.jinja", "chat_template.json")


@dataclass
class Converted:
    id: str
    turns: list[dict]
    images: list[tuple[str, bytes]]  # (extension, bytes), in placeholder order
    audios: list[tuple[str, bytes]]
    frames: list[tuple[str, bytes]]  # the video's, in time order


# ----------------------------------------------------------------------------- media


def read_media(root: str, path: str) -> bytes:
    full = os.path.join(root, path)
    if not path or not os.path.isfile(full):
        raise BadSample("missing_media", f"no file {full}")
    try:
        with open(full, "rb") as f:
            return f.read()
    except OSError as e:
        raise BadSample("bad_media", f"{full}: unreadable ({e})") from e


@contextlib.contextmanager
def _named(name: str):
    """A media file's :class:`BadSample` with the file named in it."""
    try:
        yield
    except BadSample as e:
        raise BadSample(e.reason, f"{name}: {e.detail}") from e


def image_member(data: bytes, name: str) -> tuple[str, bytes]:
    """PNG and JPEG as they are; other formats Pillow opens re-encoded to PNG (the shard reader
    takes png/jpg/jpeg members only), as RGB: what the loader would decode them to anyway. Every
    image is decoded in full as the loader decodes it, so one it cannot read is skipped here."""
    with _named(name):
        pixels = decode_image(data, "RGB", "pillow")
    image_format = Image.open(io.BytesIO(data)).format
    if image_format in IMAGE_FORMATS:
        return IMAGE_FORMATS[image_format], data
    out = io.BytesIO()
    pixels.save(out, format="PNG")
    return "png", out.getvalue()


def audio_member(data: bytes, name: str) -> tuple[str, bytes]:
    """16-bit WAV and FLAC as they are; 8/24/32-bit integer WAV converted to 16-bit (the loader
    reads 16-bit PCM only). Other formats would need a decoder this project does not have. WAV is
    read in full, as the loader reads it; FLAC's header only (its decoder is an optional package)."""
    ext = os.path.splitext(name)[1][1:].lower()
    if ext not in AUDIO_EXTS:
        raise BadSample("unsupported_media", f"{name}: .{ext} audio (the loader reads {', '.join(AUDIO_EXTS)})")
    if ext == "flac":
        if not data.startswith(b"fLaC"):
            raise BadSample("bad_audio", f"{name}: not a FLAC file")
        return ext, data
    with _named(name):
        width, channels, rate, frames = read_wav(data)
    if width == 2:
        return ext, data
    samples = np.frombuffer(frames, np.uint8).reshape(-1, width)
    if width == 1:  # 8-bit WAV is unsigned
        pcm = (samples[:, 0].astype(np.int16) - 128) << 8
    else:  # little-endian signed: the two most significant bytes are the 16-bit sample
        pcm = samples[:, -2:].copy().view("<i2")[:, 0]
    out = io.BytesIO()
    with wave.open(out, "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.astype("<i2").tobytes())
    return ext, out.getvalue()


# ----------------------------------------------------------------------------- records


def _record_id(record: dict) -> str:
    return "" if record.get("id") is None else str(record["id"])


def _paths(record: dict, name: str) -> list[str]:
    value = record.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise BadSample("bad_record", f'"{name}": {reprlib.repr(value)} is not a path or a list of paths')


def llava_turns(conversations: object) -> tuple[list[dict], Optional[int]]:
    """The project's turns, and the index of the first human (not system) turn, or None."""
    if not isinstance(conversations, list) or not conversations:
        raise BadSample("no_conversations", "no \"conversations\" list, or an empty one")
    turns, first_human = [], None
    for turn in conversations:
        speaker = str(turn.get("from", turn.get("role", ""))).lower() if isinstance(turn, dict) else ""
        content = turn.get("value", turn.get("content")) if isinstance(turn, dict) else None
        if speaker not in ROLES or not isinstance(content, str):
            raise BadSample("bad_conversation",
                            f"turn {reprlib.repr(turn)} is not {{'from': {'|'.join(ROLES)}, 'value': str}}")
        if first_human is None and speaker in ("human", "user"):
            first_human = len(turns)
        turns.append({"role": ROLES[speaker], "content": content})
    return turns, first_human


def check_placeholders(turns: list[dict], counts: dict[str, int]) -> None:
    """As many of each placeholder as files of its kind, none in an answer (the loader's rule)."""
    for tag, count in counts.items():
        found = sum(t["content"].count(tag) for t in turns)
        if found != count:
            raise BadSample("placeholder_mismatch", f"{found} {tag} placeholders for {count} files")
        if any(tag in t["content"] for t in turns if t["role"] == "assistant"):
            raise BadSample("placeholder_mismatch", f"{tag} in an assistant turn")


def place_media(turns: list[dict], first_human: Optional[int], images: list[str], frames: list[str],
                audios: list[str]) -> None:
    """Adds missing placeholders to ``turns`` and checks the counts."""
    counts = {IMAGE: len(images), VIDEO: 1 if frames else 0, AUDIO: len(audios)}
    missing = "".join(tag * n for tag, n in counts.items() if n and not any(tag in t["content"] for t in turns))
    if missing and first_human is None:
        turns.insert(0, {"role": "user", "content": missing})
    elif missing:
        turns[first_human]["content"] = f"{missing}\n{turns[first_human]['content']}"
    check_placeholders(turns, counts)


def llava_sample(record: dict, root: str) -> Converted:
    turns, first_human = llava_turns(record.get("conversations"))
    video = record.get("video")
    if isinstance(video, str):
        raise BadSample("unsupported_media", f"video file {video}: only a list of frame images can be written")
    images, frames, audios = (_paths(record, name) for name in ("image", "video", "audio"))
    place_media(turns, first_human, images, frames, audios)
    return Converted(id=_record_id(record), turns=turns,
                     images=[image_member(read_media(root, p), p) for p in images],
                     audios=[audio_member(read_media(root, p), p) for p in audios],
                     frames=[image_member(read_media(root, p), p) for p in frames])


def text_sample(record: dict, text_key: str) -> Converted:
    text = record.get(text_key)
    if not isinstance(text, str) or not text.strip():
        raise BadSample("no_text", f"no non-empty string under \"{text_key}\"")
    turns = [{"role": "assistant", "content": text}]
    check_placeholders(turns, {IMAGE: 0, VIDEO: 0, AUDIO: 0})
    return Converted(id=_record_id(record), turns=turns, images=[], audios=[], frames=[])


def read_records(path: str) -> tuple[int, Iterator[tuple[str, object]]]:
    """(record count, iterator of (where, record)) of a JSON list or a JSONL file (blank lines
    skipped). A record that is not JSON comes as a :class:`BadSample` in its place."""
    name = os.path.basename(path)
    with open(path, "rb") as f:
        head = f.read(4096).removeprefix(codecs.BOM_UTF8).lstrip()
    if head.startswith(b"["):
        try:
            with open(path, "rb") as f:
                records = json.load(f)
        except (ValueError, RecursionError) as e:  # RecursionError: nested deeper than Python's stack
            return 1, iter([(name, BadSample("bad_json", f"not a JSON list ({e})"))])
        return len(records), ((f"{name}[{i}]", record) for i, record in enumerate(records))
    with open(path, "rb") as f:
        total = sum(1 for line in f if line.strip())
    return total, _jsonl(path, name)


def _jsonl(path: str, name: str) -> Iterator[tuple[str, object]]:
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield f"{name}:{number}", json.loads(line)
                except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError; too deep
                    yield f"{name}:{number}", BadSample("bad_json", str(e))


def lone_surrogate(record: object) -> Optional[str]:
    """Where in a parsed record a lone surrogate stands (``conversations[1].value``), or None.
    JSON's ``\\ud800`` escapes make one; it is no character, so the text cannot be written as
    UTF-8 (nor printed in a skip reason). A loop, not recursion: records may nest deeply."""
    stack: list[tuple[str, object]] = [("", record)]
    while stack:
        field, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError as e:
                return f"{field or 'the record'} ({e.object[e.start:e.end]!r} at character {e.start})"
        elif isinstance(value, dict):
            stack += [(f"{field}.{key}" if field else str(key), item) for key, item in reversed(value.items())]
            stack += [(f"{field} (a key)", key) for key in value]
        elif isinstance(value, list):
            stack += [(f"{field}[{i}]", item) for i, item in reversed(list(enumerate(value)))]
    return None


def convert(kind: str, record: object, root: str, text_key: str) -> Converted:
    if isinstance(record, BadSample):
        raise record
    if not isinstance(record, dict):
        raise BadSample("bad_record", f"a {type(record).__name__}, not an object")
    if (field := lone_surrogate(record)) is not None:
        raise BadSample("bad_json", f"a lone surrogate, not UTF-8 text, in {field}")
    return llava_sample(record, root) if kind == "llava" else text_sample(record, text_key)


# ----------------------------------------------------------------------------- output


def _shard_size(offset: int) -> int:
    """File size of a tar whose members end at ``offset``: two zero blocks close it, and the
    file is padded to whole records (as ``tarfile`` writes it)."""
    return math.ceil((offset + 2 * tarfile.BLOCKSIZE) / tarfile.RECORDSIZE) * tarfile.RECORDSIZE


class ShardWriter:
    """``PREFIX-000000.tar``, ... in ``out``. A shard ends after ``samples_per_shard`` samples, or
    before a sample would take its file past ``max_shard_bytes`` (0: no limit; a sample larger than
    that gets a shard of its own). Each shard is written as ``.tmp`` and renamed when complete, so
    an interrupted run leaves no truncated ``*.tar`` for the loader."""

    def __init__(self, out: str, prefix: str, samples_per_shard: int, max_shard_bytes: int = 0):
        self.out, self.prefix = out, prefix
        self.samples_per_shard, self.max_shard_bytes = samples_per_shard, max_shard_bytes
        self.paths: list[str] = []
        self.samples = 0
        self._tar: Optional[tarfile.TarFile] = None
        self._in_shard = 0

    def write(self, key: str, members: list[tuple[str, bytes]]) -> None:
        """Members ``KEY + suffix``. USTAR headers (short ASCII names) are one block each, so the
        size a sample adds is known before it is written."""
        size = sum(tarfile.BLOCKSIZE * (1 + math.ceil(len(data) / tarfile.BLOCKSIZE)) for _, data in members)
        if self._tar is not None and (self._in_shard == self.samples_per_shard or self.max_shard_bytes
                                      and _shard_size(self._tar.offset + size) > self.max_shard_bytes):
            self._finish()
        if self._tar is None:
            self.paths.append(os.path.join(self.out, f"{self.prefix}-{len(self.paths):06d}.tar"))
            self._tar = tarfile.open(self.paths[-1] + ".tmp", "w", format=tarfile.USTAR_FORMAT)
            self._in_shard = 0
        for suffix, data in members:
            info = tarfile.TarInfo(key + suffix)
            info.size, info.mode = len(data), 0o644  # mtime 0, no owner: byte-identical reruns
            self._tar.addfile(info, io.BytesIO(data))
        self._in_shard += 1
        self.samples += 1

    def _finish(self) -> None:
        self._tar.close()
        os.replace(self.paths[-1] + ".tmp", self.paths[-1])
        self._tar = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if self._tar is None:
            return
        if exc_type is None:
            self._finish()
        else:
            self._tar.close()
            os.remove(self.paths.pop() + ".tmp")


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """``1,234/5,000 records (24.7%)  812.3/s  ETA 0:00:04`` on stderr: redrawn in place at most
    ten times a second on a terminal; elsewhere (a log file) a new line every 30 s, and the last."""

    def __init__(self, total: int, stream: Optional[TextIO] = None):
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = 0.1 if self.tty else 30.0
        self.started = self.shown = time.perf_counter()
        self.width = 0

    def update(self, done: int, last: bool = False) -> None:
        now = time.perf_counter()
        if not last and now - self.shown < self.interval:
            return
        self.shown = now
        rate = done / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate else 0.0
        line = (f"{done:,}/{self.total:,} records ({100 * done / max(self.total, 1):.1f}%)  "
                f"{rate:,.1f}/s  ETA {_clock(eta)}")
        if self.tty:
            self.stream.write("\r" + line.ljust(self.width) + ("\n" if last else ""))
            self.width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


# ----------------------------------------------------------------------------- the tool


def _named_record(where: str, record: object) -> str:
    """``FILE:LINE`` (``FILE[INDEX]`` in a JSON list), and the record's id where it has one."""
    record_id = _record_id(record) if isinstance(record, dict) else ""
    return f"{where} (id {reprlib.repr(record_id)})" if record_id else where


def _key(number: int, record_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", record_id).strip("_")[:40]
    return f"{number:08d}_{safe}" if safe else f"{number:08d}"


def _media_members(media: list[tuple[str, bytes]], field: str = "") -> list[tuple[str, bytes]]:
    """``.png`` for a lone file, ``.0.png``, ``.1.jpg``, ... for several (placeholder order);
    a ``field``'s members always numbered: ``.video.0.png``, ..."""
    if len(media) == 1 and not field:
        return [(f".{media[0][0]}", media[0][1])]
    prefix = f".{field}" if field else ""
    return [(f"{prefix}.{i}.{ext}", data) for i, (ext, data) in enumerate(media)]


def hf_tokenizer_for(folder: str, out: str) -> Tokenizer:
    """The Hugging Face tokenizer of ``folder``, loaded before anything is written."""
    if not os.path.isdir(folder):
        raise ValueError(f"--tokenizer {folder}: not a folder "
                         "(give a Hugging Face model folder holding tokenizer.json)")
    if os.path.exists(os.path.join(out, "tokenizer.model")):
        raise FileExistsError(f"{out} holds a tokenizer.model, which data.tokenizer would default to over the "
                              f"tokenizer of {folder} (remove it)")
    return load_tokenizer(folder)


def copy_tokenizer(folder: str, out: str) -> None:
    for name in HF_TOKENIZER_FILES:
        source, target = os.path.join(folder, name), os.path.join(out, name)
        if os.path.isfile(source) and not (os.path.exists(target) and os.path.samefile(source, target)):
            shutil.copyfile(source, target)


def prepare(out: str, *, llava: Sequence[str] = (), text: Sequence[str] = (), media_root: Optional[str] = None,
            text_key: str = "text", prefix: str = "data", samples_per_shard: int = 1000, max_shard_bytes: int = 0,
            tokenizer_vocab: int = 0, byte_fallback: bool = False, hf_tokenizer: str = "", overwrite: bool = False,
            progress: bool = True) -> dict:
    """Write the shards (and the tokenizer: trained when ``tokenizer_vocab`` > 0, copied from the
    Hugging Face model folder ``hf_tokenizer``); returns a summary: ``samples``, ``images``,
    ``videos``, ``audios``, ``shards`` (paths), ``records``, ``skipped`` (reason -> count),
    ``first_skipped`` (reason -> where and why), ``tokenizer`` (its path, a folder for a Hugging
    Face one, or None)."""
    if samples_per_shard < 1 or max_shard_bytes < 0 or tokenizer_vocab < 0:
        raise ValueError(f"samples_per_shard={samples_per_shard}, max_shard_bytes={max_shard_bytes}, "
                         f"tokenizer_vocab={tokenizer_vocab}: need >= 1, >= 0, >= 0")
    if tokenizer_vocab and hf_tokenizer:
        raise ValueError(f"--train-tokenizer {tokenizer_vocab} and --tokenizer {hf_tokenizer}: give one")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", prefix):
        raise ValueError(f"prefix {prefix!r}: use letters, digits, _ and - only")
    os.makedirs(out, exist_ok=True)
    existing = sorted(glob.glob(os.path.join(glob.escape(out), f"{prefix}-*.tar")))
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {len(existing)} {prefix}-*.tar shards (--overwrite replaces them)")
    checker = hf_tokenizer_for(hf_tokenizer, out) if hf_tokenizer else None
    for path in existing:
        os.remove(path)
    # Every file is opened (and counted) first: a missing one fails before any output, and the
    # progress bar knows its total.
    sources = [(kind, path, *read_records(path)) for kind, paths in (("llava", llava), ("text", text))
               for path in paths]
    total = sum(count for _, _, count, _ in sources)
    bar = Progress(total) if progress else None
    skipped, first_skipped = collections.Counter(), {}
    texts: list[str] = []
    images = videos = audios = done = 0
    with ShardWriter(out, prefix, samples_per_shard, max_shard_bytes) as writer:
        for kind, path, _, records in sources:
            root = media_root or os.path.dirname(os.path.abspath(path))
            for where, record in records:
                try:
                    sample = convert(kind, record, root, text_key)
                    conversation = json.dumps(sample.turns, ensure_ascii=False).encode()
                    # The loader's own checks: roles, an answer, reserved tokens; with a given tokenizer, its tokens.
                    turns = parse_conversation(conversation, checker.reserved_tokens if checker else None)
                    if checker:
                        text_tokens(turns, checker)
                except BadSample as e:
                    skipped[e.reason] += 1
                    first_skipped.setdefault(e.reason, f"{_named_record(where, record)}: {e.detail}")
                else:
                    writer.write(_key(writer.samples, sample.id), [(".json", conversation),
                                                                   *_media_members(sample.images),
                                                                   *_media_members(sample.frames, VIDEO_FIELD),
                                                                   *_media_members(sample.audios)])
                    images, audios = images + len(sample.images), audios + len(sample.audios)
                    videos += bool(sample.frames)
                    texts += [t["content"] for t in sample.turns][:TOKENIZER_MAX_TEXTS - len(texts)]
                done += 1
                if bar:
                    bar.update(done, last=done == total)
    tokenizer = None
    if tokenizer_vocab and writer.samples:
        tokenizer = train_tokenizer(texts, os.path.join(out, "tokenizer"), tokenizer_vocab, byte_fallback=byte_fallback)
    if checker and writer.samples:
        copy_tokenizer(hf_tokenizer, out)
        tokenizer = out
    return {"samples": writer.samples, "images": images, "videos": videos, "audios": audios, "shards": writer.paths,
            "records": total,
            "skipped": dict(sorted(skipped.items())), "first_skipped": dict(sorted(first_skipped.items())),
            "tokenizer": tokenizer}


def _byte_count(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMG]?)i?B?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: a byte count such as 500000, 64M or 1G")
    return int(match[1]) * 1024 ** " KMG".index(match[2].upper() or " ")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=RECORD_LAYOUT,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--llava", nargs="+", action="extend", default=[], metavar="FILE",
                        help="LLaVA-style JSON list or JSONL of conversations")
    parser.add_argument("--text", nargs="+", action="extend", default=[], metavar="FILE", help="plain text JSONL")
    parser.add_argument("--media-root", help="folder the media paths are relative to (default: each JSON's folder)")
    parser.add_argument("--text-key", default="text", help="field of a plain text record holding its text")
    parser.add_argument("--prefix", default="data", help="shard names: PREFIX-000000.tar, ...")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--max-shard-bytes", type=_byte_count, default=0, metavar="SIZE",
                        help="also end a shard before it passes SIZE bytes (e.g. 1G; default: no limit)")
    parser.add_argument("--train-tokenizer", type=int, default=0, metavar="VOCAB",
                        help="train OUT/tokenizer.model (sentencepiece, the special tokens) over the written text")
    parser.add_argument("--byte-fallback", action="store_true",
                        help="tokenizer encodes unseen characters as bytes (needs VOCAB > 256 + pieces)")
    parser.add_argument("--tokenizer", default="", metavar="HF_DIR",
                        help="copy this Hugging Face model folder's tokenizer into OUT; skip records it cannot take")
    parser.add_argument("--overwrite", action="store_true", help="replace existing PREFIX-*.tar shards in OUT")
    parser.add_argument("--index-config", metavar="RECIPE.yaml",
                        help="also index OUT for this training recipe (tools/index_data.py), so its runs start at once")
    args = parser.parse_args(argv)
    if not args.llava and not args.text:
        parser.error("give at least one --llava or --text input")
    started = time.perf_counter()
    try:
        summary = prepare(args.out, llava=args.llava, text=args.text, media_root=args.media_root,
                          text_key=args.text_key, prefix=args.prefix, samples_per_shard=args.samples_per_shard,
                          max_shard_bytes=args.max_shard_bytes, tokenizer_vocab=args.train_tokenizer,
                          byte_fallback=args.byte_fallback, hf_tokenizer=args.tokenizer, overwrite=args.overwrite)
    except (OSError, ValueError) as e:
        print(f"prepare_data: error: {e}", file=sys.stderr)
        return 2
    print(f"prepare_data: {summary['samples']} samples ({summary['images']} images, {summary['videos']} videos, "
          f"{summary['audios']} audio clips) in {len(summary['shards'])} shards -> {args.out} "
          f"({time.perf_counter() - started:.1f} s)")
    if summary["skipped"]:
        print(f"prepare_data: skipped {sum(summary['skipped'].values())} of {summary['records']} records")
        for reason, count in summary["skipped"].items():
            print(f"  {reason} {count} (first: {summary['first_skipped'][reason]})")
    if summary["tokenizer"]:
        vocab = load_tokenizer(summary["tokenizer"]).vocab_size
        print(f"prepare_data: tokenizer (vocab {vocab}) -> {summary['tokenizer']}")
    if not summary["samples"]:
        print("prepare_data: nothing written", file=sys.stderr)
        return 1
    if args.index_config:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from index_data import index_one

        print(index_one(args.out, args.index_config, [], os.cpu_count() or 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
