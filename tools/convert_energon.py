"""Write megaomni shards from a Megatron-Energon data set of typed samples (captioning, VQA, ...).

    python tools/convert_energon.py SRC OUT [--split train] [--prompt TEXT]
        [--sample-type NAME --field-map JSON] [--prefix data] [--samples-per-shard 1000]
        [--max-shard-bytes SIZE] [--overwrite]

SRC is a directory ``energon prepare`` indexed (what it writes: megaomni/data/energon.py). A data
set whose members already follow megaomni's naming (``KEY.json`` conversations, ...) needs no
conversion: train on it directly (``data.path=SRC``). This tool is for the others: it reads the
split's shards (``--split``, default ``train``) in split order, takes each sample's fields through
``.nv-meta/dataset.yaml``'s ``field_map`` as Energon does (``txt``: a part's UTF-8 text;
``json[question]``, ``json[answers][0]``: into a JSON part; ``jpg,png``: the first present), and
writes ``OUT/PREFIX-000000.tar``, ... (README "Data format"), showing progress on stderr. The
conversation of each sample type:

- ``CaptioningSample`` (image, caption): user ``<image>\\nDescribe the image.`` (``--prompt``),
  assistant the caption.
- ``VQASample``, ``VQAOCRSample`` (image, context, answers, answer_weights): user the context, after
  ``<image>\\n`` unless it holds its own ``<image>``; assistant one answer: of the highest
  ``answer_weights``, else the most frequent (the first of equals); a lone string as it is.
- ``OCRSample`` (image, text): user ``<image>\\nRead the text in the image.`` (``--prompt``),
  assistant the text.
- ``TextSample`` (text): one assistant turn, as tools/prepare_data.py makes of plain text.

The image is copied byte for byte when PNG or JPEG, else re-encoded to PNG (what Pillow opens);
its pixels are not decoded here (the loader skips a truncated one). A crude data set
(``CrudeWebdataset``) or one with its own ``sample_loader.py`` has no field map: give
``--sample-type`` and ``--field-map`` (as ``energon prepare`` takes them, e.g. ``'{"image": "jpg",
"caption": "txt"}'``); they also override dataset.yaml's.

Samples split.yaml excludes are left out (counted as ``excluded``); a bad sample is skipped and
counted by reason: ``missing_field`` (no member or JSON key for a field; an optional one,
``answer_weights``, is then left out), ``bad_field`` (unreadable text or JSON, a value of the
wrong kind), ``bad_image`` (an image that does not decode), ``no_answer``,
``placeholder_mismatch`` (an ``<image>`` in a caption), ``reserved_token``, ``corrupt_shard`` (a
shard unreadable from some point on, or holding fewer samples than Energon counted: the rest of
it). The summary gives each reason's
count and first case. The output has no tokenizer: set ``data.tokenizer`` (or train one:
tools/prepare_data.py). Exit status: 0, or 1 when nothing was written, 2 for an unusable input or
option. Keys are ``NNNNNNNN_KEY`` (a running number and Energon's key cut to
``[A-Za-z0-9_-]``); the same input gives byte-identical shards.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
import tarfile
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/ is scripts, not a package
from prepare_data import Progress, ShardWriter, _byte_count, _key, check_placeholders, image_member, place_media  # noqa: E402,I001

from megaomni.data import energon, storage  # noqa: E402
from megaomni.data.sample import parse_conversation  # noqa: E402
from megaomni.data.shards import SHARD_ERRORS  # noqa: E402
from megaomni.errors import BadSample  # noqa: E402
from megaomni.media.audio import AUDIO  # noqa: E402
from megaomni.media.vision import IMAGE, VIDEO  # noqa: E402

SKIP_META = re.compile(r"__[^/]*__($|/)")  # Energon's skip_meta_re: members it never reads as parts
SPLIT_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # Energon's split_name_re: KEY.PART
FIELD = re.compile(r"^(?P<part>[^[\]]+)(?P<access>(?:\[[^[\]]+\])*)$")  # part[a][0]: Energon's field access
# How Energon's default decoder (webdataset's basic handlers) reads a part, by its last extension.
TEXT_EXTS, JSON_EXTS = ("txt", "text", "transcript"), ("json", "jsn")
INT_EXTS = ("cls", "cls2", "class", "count", "index", "inx", "id")


@dataclass(frozen=True)
class Kind:
    """An Energon sample type this tool converts: the fields it reads and its conversation."""

    fields: tuple[str, ...]  # needed in the field map (answers & co. are optional)
    turns: Callable[[Callable[[str], object], str], list[dict]]  # (field getter, prompt) -> turns
    prompt: str = ""
    image: bool = True


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise BadSample("bad_field", f"{name}: {type(value).__name__}, not text")
    return value


def _ask(prompt_field: str) -> Callable[[Callable[[str], object], str], list[dict]]:
    """A fixed prompt, the answer from ``prompt_field``."""
    return lambda get, prompt: [{"role": "user", "content": prompt},
                                {"role": "assistant", "content": _text(get(prompt_field), prompt_field)}]


def _answer(answers: object, weights: object) -> str:
    if isinstance(answers, str):
        return answers
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise BadSample("no_answer" if answers in (None, []) else "bad_field",
                        f"answers: {answers!r:.80} is not a string or a non-empty list of strings")
    if weights is not None:
        if not isinstance(weights, list) or len(weights) != len(answers) or \
                not all(isinstance(w, (int, float)) for w in weights):
            raise BadSample("bad_field", f"answer_weights: {weights!r:.80} is not one number per answer")
        return answers[max(range(len(answers)), key=lambda i: weights[i])]
    return max(answers, key=answers.count)  # the first of the most frequent


def _vqa(get: Callable[[str], object], prompt: str) -> list[dict]:
    return [{"role": "user", "content": _text(get("context"), "context")},
            {"role": "assistant", "content": _answer(get("answers"), get("answer_weights"))}]


KINDS = {
    "CaptioningSample": Kind(("image", "caption"), _ask("caption"), "Describe the image."),
    "VQASample": Kind(("image", "context", "answers"), _vqa),
    "VQAOCRSample": Kind(("image", "context", "answers"), _vqa),
    "OCRSample": Kind(("image", "text"), _ask("text"), "Read the text in the image."),
    "TextSample": Kind(("text",), lambda get, _: [{"role": "assistant", "content": _text(get("text"), "text")}],
                       image=False),
}


# ----------------------------------------------------------------------------- reading


def iter_samples(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {part: bytes}) of one shard, as Energon groups members: consecutive ones of a key.
    A shard unreadable from some point on yields ``("", {})`` after the samples before it, its
    error in ``parts[""]``."""
    key, parts = None, {}
    try:
        with storage.open_file(path) as f, tarfile.open(fileobj=f, mode="r:*") as tar:
            for member in tar:
                match = SPLIT_NAME.match(member.name)
                if not member.isreg() or SKIP_META.match(member.name) or not match:
                    continue
                if match[1] != key:
                    if key is not None:
                        yield key, parts
                    key, parts = match[1], {}
                parts[match[2]] = tar.extractfile(member).read()
    except SHARD_ERRORS as e:
        if key is not None:
            parts = {}  # its members may be cut short: the sample goes with the rest of the shard
        yield "", {"": (str(e).splitlines()[0] if str(e) else type(e).__name__).encode()}
        return
    if key is not None:
        yield key, parts


def decode(part: str, data: bytes) -> object:
    """A part's value as Energon's default decoder gives it, images left as bytes."""
    ext = part.rpartition(".")[2].lower()
    try:
        if ext in TEXT_EXTS:
            return data.decode("utf-8")
        if ext in JSON_EXTS:
            return json.loads(data)
        if ext in INT_EXTS:
            return int(data)
    except (ValueError, RecursionError) as e:  # bad UTF-8, bad JSON, not a number
        raise BadSample("bad_field", f"part {part}: unreadable as .{ext} ({e})") from e
    return data


def field_value(parts: dict[str, bytes], spec: str, name: str) -> object:
    """Field ``name`` of a sample by its field-map entry ``spec``: its options in order, the
    first that reads."""
    failed = None
    for option in spec.split(","):
        match = FIELD.match(option.strip())
        part, steps = (match["part"], re.findall(r"\[([^[\]]+)\]", match["access"])) if match else (option, [])
        if part not in parts:
            continue
        value = decode(part, parts[part])
        try:
            for step in steps:
                value = value[int(step)] if isinstance(value, list) else value[step]
        except (KeyError, IndexError, ValueError, TypeError):
            failed = f"{name}: no {option.strip()} in the sample"
            continue
        return value
    if failed:
        raise BadSample("missing_field", failed)
    raise BadSample("missing_field", f"{name}: no {' or '.join(o.strip().split('[')[0] for o in spec.split(','))} "
                    f"member (has {', '.join(sorted(parts)) or 'none'})")


def convert_sample(kind: Kind, field_map: dict[str, str], parts: dict[str, bytes], prompt: str,
                   key: str) -> tuple[bytes, list[tuple[str, bytes]]]:
    """One sample's KEY.json bytes and media members (suffix, bytes)."""
    def get(name: str) -> object:
        """A field's value; None for an optional one (answer_weights) that is not mapped or not there."""
        try:
            return field_value(parts, field_map[name], name) if name in field_map else None
        except BadSample as e:
            if e.reason == "missing_field" and name not in kind.fields:
                return None
            raise

    turns = kind.turns(get, prompt)
    media: list[tuple[str, bytes]] = []
    if kind.image:
        image = get("image")
        if not isinstance(image, bytes):
            raise BadSample("bad_field", f"image: {type(image).__name__}, not an image member")
        ext, data = image_member(image, f"{key}.{field_map['image']}")
        media.append((f".{ext}", data))
        place_media(turns, 0, ["image"], [], [])  # <image>\n before the first user turn's text, unless it has one
    else:
        check_placeholders(turns, {IMAGE: 0, VIDEO: 0, AUDIO: 0})
    conversation = json.dumps(turns, ensure_ascii=False).encode()
    parse_conversation(conversation)  # the loader's own checks: roles, an answer, reserved tokens
    return conversation, media


# ----------------------------------------------------------------------------- the tool


def sample_kind(src: str, sample_type: str = "", field_map: Optional[dict] = None) -> tuple[str, Kind, dict]:
    """(type name, Kind, field map) from the options, else from SRC's dataset.yaml."""
    config = energon.dataset_config(src)
    name = sample_type or (config.sample_type if config else "")
    fields = field_map if field_map is not None else (config.field_map if config else None)
    if name not in KINDS:
        if name == "CrudeSample" and not sample_type:
            raise ValueError(f"{src}: a crude Energon data set: if its members follow megaomni's naming (KEY.json "
                             f"conversations), train on it directly (data.path={src}); else give --sample-type "
                             "and --field-map")
        found = f"sample type {name}" if name else f"no {energon.META}/{energon.DATASET_FILE}"
        raise ValueError(f"{src}: {found}: this tool converts {', '.join(KINDS)} (--sample-type)")
    if fields is None:
        why = f"its own {config.sample_loader}" if config and config.sample_loader else "no field_map"
        raise ValueError(f"{src}: {name} with {why}: give --field-map (e.g. "
                         f"'{json.dumps({f: '...' for f in KINDS[name].fields})}')")
    if missing := [f for f in KINDS[name].fields if f not in fields]:
        raise ValueError(f"{src}: the field map {fields} lacks {', '.join(missing)} for {name}")
    return name, KINDS[name], fields


def convert(src: str, out: str, *, split: str = energon.TRAIN, prompt: Optional[str] = None, sample_type: str = "",
            field_map: Optional[dict] = None, prefix: str = "data", samples_per_shard: int = 1000,
            max_shard_bytes: int = 0, overwrite: bool = False, progress: bool = True) -> dict:
    """Write the shards; returns a summary: ``type``, ``samples``, ``shards`` (paths), ``records``
    (samples read), ``expected`` (Energon's count of the split's samples), ``skipped`` (reason ->
    count), ``first_skipped`` (reason -> where and why)."""
    if samples_per_shard < 1 or max_shard_bytes < 0:
        raise ValueError(f"samples_per_shard={samples_per_shard}, max_shard_bytes={max_shard_bytes}: need >= 1, >= 0")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", prefix):
        raise ValueError(f"prefix {prefix!r}: use letters, digits, _ and - only")
    if not storage.is_dir(src) or not energon.is_prepared(src):
        raise ValueError(f"{src}: not a directory energon prepare indexed (no {energon.META}/.info.json)")
    if not storage.is_remote(src) and os.path.realpath(src) == os.path.realpath(out):
        raise ValueError(f"OUT {out} is SRC: write the megaomni shards elsewhere")
    name, kind, fields = sample_kind(src, sample_type, field_map)
    part = energon.split(src, split)
    counts = energon.shard_counts(src)
    os.makedirs(out, exist_ok=True)
    existing = sorted(glob.glob(os.path.join(glob.escape(out), f"{prefix}-*.tar")))
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {len(existing)} {prefix}-*.tar shards (--overwrite replaces them)")
    for path in existing:
        os.remove(path)
    total = sum(counts[s] for s in part.shards)
    bar = Progress(total) if progress else None
    skipped, first_skipped = collections.Counter(), {}
    done = seen = through = 0  # progress over Energon's counts; samples read; Energon's count of the shards so far

    def skip(where: str, error: BadSample) -> None:
        skipped[error.reason] += 1
        first_skipped.setdefault(error.reason, f"{where}: {error.detail}")

    with ShardWriter(out, prefix, samples_per_shard, max_shard_bytes) as writer:
        for shard in part.shards:
            excluded, read, through = part.excluded.get(shard, set()), 0, through + counts[shard]
            for key, parts in iter_samples(storage.join(src, shard)):
                if not key:
                    skip(shard, BadSample("corrupt_shard", f"unreadable after {read} of its {counts[shard]} samples "
                                          f"({parts[''].decode()}); the rest is skipped"))
                    break
                done, read, seen = done + 1, read + 1, seen + 1
                if key in excluded:
                    skip(f"{shard}:{key}", BadSample("excluded", f"{energon.META}/split.yaml excludes it"))
                else:
                    try:
                        conversation, media = convert_sample(kind, fields, parts, kind.prompt if prompt is None
                                                             else prompt, key)
                    except BadSample as e:
                        skip(f"{shard}:{key}", e)
                    else:
                        writer.write(_key(writer.samples, key), [(".json", conversation), *media])
                if bar:
                    bar.update(min(done, total))
            else:
                if read < counts[shard]:  # tarfile ends quietly at a cut header: Energon's count tells
                    skip(shard, BadSample("corrupt_shard", f"{read} of its {counts[shard]} samples read (cut short, "
                                          "or changed since energon prepare)"))
            done = max(done, through)  # past a short shard
        if bar:
            bar.update(total, last=True)
    return {"type": name, "samples": writer.samples, "shards": writer.paths, "records": seen, "expected": total,
            "skipped": dict(sorted(skipped.items())), "first_skipped": dict(sorted(first_skipped.items()))}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", metavar="SRC", help="a directory energon prepare indexed (holding .nv-meta/)")
    parser.add_argument("out", metavar="OUT", help="output directory")
    parser.add_argument("--split", default=energon.TRAIN, help="split part of .nv-meta/split.yaml to convert")
    parser.add_argument("--prompt", default=None,
                        help="the user turn of a captioning / OCR sample (default: 'Describe the image.' / "
                             "'Read the text in the image.')")
    parser.add_argument("--sample-type", default="", help=f"override dataset.yaml's: {', '.join(KINDS)}")
    parser.add_argument("--field-map", type=json.loads, default=None, metavar="JSON",
                        help='override dataset.yaml\'s, e.g. \'{"image": "jpg", "caption": "txt"}\'')
    parser.add_argument("--prefix", default="data", help="shard names: PREFIX-000000.tar, ...")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--max-shard-bytes", type=_byte_count, default=0, metavar="SIZE",
                        help="also end a shard before it passes SIZE bytes (e.g. 1G; default: no limit)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing PREFIX-*.tar shards in OUT")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        summary = convert(args.src, args.out, split=args.split, prompt=args.prompt, sample_type=args.sample_type,
                          field_map=args.field_map, prefix=args.prefix, samples_per_shard=args.samples_per_shard,
                          max_shard_bytes=args.max_shard_bytes, overwrite=args.overwrite)
    except (OSError, ValueError) as e:
        print(f"convert_energon: error: {e}", file=sys.stderr)
        return 2
    print(f"convert_energon: {summary['samples']} samples ({summary['type']}) in {len(summary['shards'])} shards "
          f"-> {args.out} ({time.perf_counter() - started:.1f} s)")
    if summary["skipped"]:
        print(f"convert_energon: skipped {sum(summary['skipped'].values())} of {summary['records']} samples")
        for reason, count in summary["skipped"].items():
            print(f"  {reason} {count} (first: {summary['first_skipped'][reason]})")
    if not summary["samples"]:
        print("convert_energon: nothing written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
