"""Megatron-Energon prepared data sets: a directory that ``energon prepare DIR`` indexed, read in place.

What ``energon prepare`` (megatron-energon 7.x) adds to a directory of WebDataset tars (which may
lie in subfolders); it changes no tar:

- ``.nv-meta/.info.json`` (``.info.yaml`` in older versions): ``{"energon_version": ..., "shard_counts":
  {SHARD: samples, ...}}``, each SHARD a path relative to DIR (``parts/data-000000.tar``);
- ``.nv-meta/split.yaml`` (or ``split.json``): ``split_parts: {train: [SHARD, ...], val: [...],
  test: [...]}``, runs of names brace-collapsed (``parts/data-{000000..000099}.tar``), and
  ``exclude: [...]``: shards, or single samples as ``SHARD/KEY``;
- ``.nv-meta/dataset.yaml``: what a sample is. A typed sample (``sample_type: {__module__:
  megatron.energon, __class__: CaptioningSample}``) with a ``field_map`` from its fields to tar
  parts (``{image: jpg, caption: txt}``; ``json[question]`` reads into a JSON part, ``jpg,png``
  are alternatives) or with a ``sample_loader.py`` of its own; or raw parts (``__class__:
  CrudeWebdataset``) for the user's code to decode. Older files name the data set class at the
  top instead (``__class__: CaptioningWebdataset``, deprecated in 7.x);
- ``SHARD.tar.idx`` beside each shard (little-endian uint64 byte offsets of its samples' first
  headers, then of its last member's end) and ``.nv-meta/index.sqlite`` / ``index.uuid``:
  Energon's own random access. megaomni reads neither: its index (megaomni/data/index.py) holds
  the byte spans and the sizes it plans steps with.

**Read directly or convert.** The tars are plain WebDataset, and a sample's key ends at the first
dot of its member names, as megaomni's reader has it. So :func:`shards` (``list_shards`` calls
it) gives the ``train`` split's shards, in split order, and they are indexed and read like any
other directory's: directly, when their members follow megaomni's naming (``KEY.json`` a
conversation, ``KEY.png``, ``KEY.wav``, ...; megaomni/data/shards.py). That is a data set whose
dataset.yaml is crude, has its own sample loader, or is missing. A data set of Energon's typed
samples (a ``field_map``: a caption in ``KEY.txt``, a question and answers in ``KEY.json``) holds
no megaomni conversations: ``python tools/convert_energon.py SRC OUT`` writes megaomni shards from
it (captioning, VQA, OCR and text samples), and reading it directly is refused with a message
naming that tool. Also refused here, and handled by the tool: split entries that exclude single
samples, and gzipped ``.tgz`` shards (megaomni reads each sample by its byte range). Energon's
other kinds, metadatasets (a YAML file blending data sets) and JSONL data sets, are not read:
blend directories with ``data.path=DIR:WEIGHT,...``.
"""

from __future__ import annotations

import itertools
import re
import string
from dataclasses import dataclass, field
from typing import Optional

import yaml

from megaomni.data import storage

META = ".nv-meta"
INFO_FILES = (".info.json", ".info.yaml")
SPLIT_FILES = ("split.yaml", "split.json")
DATASET_FILE = "dataset.yaml"
TRAIN = "train"
CONVERT = "tools/convert_energon.py"


class EnergonError(ValueError):
    """A prepared data set this reader cannot take as it is (the message says why and what to do)."""


def meta_path(path: str, name: str) -> str:
    return storage.join(storage.join(path, META), name)


def is_prepared(path: str) -> bool:
    """``path`` is a WebDataset directory ``energon prepare`` indexed (as Energon tells one)."""
    return any(storage.is_file(meta_path(path, name)) for name in INFO_FILES)


def _load(path: str, names: tuple[str, ...]) -> tuple[str, object]:
    """(name, parsed content) of the first of ``names`` in ``path``'s ``.nv-meta`` (YAML reads JSON too)."""
    for name in names:
        if storage.is_file(meta_path(path, name)):
            with storage.open_file(meta_path(path, name)) as f:
                try:
                    return name, yaml.safe_load(f.read())
                except yaml.YAMLError as e:
                    raise EnergonError(f"{META}/{name}: unreadable ({e})") from e
    raise EnergonError(f"no {META}/{' or '.join(names)} (prepare it: energon prepare {path})")


def shard_counts(path: str) -> dict[str, int]:
    """Energon's sample count of each shard it indexed, by its name relative to ``path``."""
    name, info = _load(path, INFO_FILES)
    counts = info.get("shard_counts") if isinstance(info, dict) else None
    if not isinstance(counts, dict):
        raise EnergonError(f"{META}/{name}: no shard_counts")
    return {str(k): int(v) for k, v in counts.items()}


@dataclass
class Split:
    """One split part of ``split.yaml``."""

    shards: list[str]  # names relative to the data set, in split order, excluded shards left out
    excluded: dict[str, set[str]] = field(default_factory=dict)  # shard name -> keys of samples excluded


def split(path: str, part: str = TRAIN) -> Split:
    """The shards of split ``part`` and the samples it excludes, as Energon reads them
    (``WebdatasetMeta.from_config``)."""
    name, splits = _load(path, SPLIT_FILES)
    parts = splits.get("split_parts") if isinstance(splits, dict) else None
    if not isinstance(parts, dict):
        raise EnergonError(f"{META}/{name}: no split_parts")
    if part not in parts:
        raise EnergonError(f"{META}/{name}: no {part!r} split (it has {', '.join(map(str, parts)) or 'none'})")
    excludes = {e for entry in splits.get("exclude") or [] for e in expand(str(entry))}
    names = [n for entry in parts[part] or [] for n in expand(str(entry))]
    counts = shard_counts(path)
    excluded: dict[str, set[str]] = {}
    for entry in excludes - set(counts):  # SHARD/KEY (Energon matches f"{shard}/{key}"; a key may hold a /)
        for shard in (entry[:i] for i, char in enumerate(entry) if char == "/"):
            if shard in counts:
                excluded.setdefault(shard, set()).add(entry[len(shard) + 1:])
                break
    shards = [n for n in names if n not in excludes]
    if not shards:
        raise EnergonError(f"{META}/{name}: the {part!r} split holds no shards")
    if missing := [n for n in shards if n not in counts]:
        raise EnergonError(f"shard {missing[0]} of the {part!r} split is not in {META}/.info.json: "
                           f"prepare the data set again (energon prepare {path})")
    return Split(shards, {n: keys for n, keys in excluded.items() if n in shards})


@dataclass
class DatasetConfig:
    """What ``.nv-meta/dataset.yaml`` says a sample is."""

    sample_type: str  # Energon's class name (CaptioningSample, CrudeSample, ...), or MODULE.CLASS for one of the user's
    field_map: Optional[dict[str, str]] = None  # sample field -> tar part(s)
    sample_loader: str = ""  # its own loader (``sample_loader.py:sample_loader``), or ""


def dataset_config(path: str, name: str = DATASET_FILE) -> Optional[DatasetConfig]:
    """``path``'s dataset.yaml, or None where there is none."""
    if not storage.is_file(meta_path(path, name)):
        return None
    _, config = _load(path, (name,))
    if not isinstance(config, dict):
        raise EnergonError(f"{META}/{name}: not a mapping")
    spec = config.get("sample_type") if isinstance(config.get("sample_type"), dict) else config
    cls, module = str(spec.get("__class__", "")), str(spec.get("__module__", "megatron.energon"))
    if spec is config and cls.endswith("Webdataset"):  # older: CaptioningWebdataset, CrudeWebdataset, ...
        cls = cls.removesuffix("Webdataset") + "Sample"
    if module != "megatron.energon":
        cls = f"{module}.{cls}"
    field_map = config.get("field_map")
    return DatasetConfig(cls, {str(k): str(v) for k, v in field_map.items()} if isinstance(field_map, dict) else None,
                         str(config.get("sample_loader") or ""))


def shards(path: str) -> list[str]:
    """The ``train`` split's shards, full paths in split order, for megaomni's reader: the data set
    must hold megaomni's members (no field_map), whole ``.tar`` shards and no single-sample excludes."""
    config = dataset_config(path)
    if config is not None and config.field_map is not None:
        fields = ", ".join(f"{k}: {v}" for k, v in config.field_map.items())
        raise EnergonError(f"an Energon data set of {config.sample_type} ({fields}), not megaomni's conversations: "
                           f"convert it (python {CONVERT} {path} OUT) and train on OUT; if its members are "
                           f"megaomni's after all (KEY.json conversations), make {META}/{DATASET_FILE} crude "
                           "(__module__: megatron.energon, __class__: CrudeWebdataset)")
    train = split(path)
    if gzipped := [n for n in train.shards if not n.endswith(".tar")]:
        raise EnergonError(f"shard {gzipped[0]} is not a plain .tar (megaomni reads samples by byte range): "
                           f"convert the data set (python {CONVERT} {path} OUT), or gunzip its shards and prepare "
                           "again")
    if train.excluded:
        shard, keys = next(iter(train.excluded.items()))
        raise EnergonError(f"split.yaml excludes single samples ({shard}/{sorted(keys)[0]}, ...), which megaomni's "
                           f"index does not: convert the data set (python {CONVERT} {path} OUT), which leaves them out")
    return [storage.join(path, n) for n in train.shards]


# ----------------------------------------------------------------------------- brace expansion

_INT_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.-?(\d+))?$")
_CHAR_RANGE = re.compile(r"^([A-Za-z])\.\.([A-Za-z])(?:\.\.-?(\d+))?$")
_ALPHABET = string.ascii_uppercase + string.ascii_lowercase


def expand(pattern: str) -> list[str]:
    """Shell-style brace expansion as the ``braceexpand`` package (Energon's) does it, without
    backslash escapes: ``{a,b}``, ``{0..9}``, ``{007..010}`` (zero padded), ``{1..9..2}``,
    ``{4..1}``, ``{a..e}``, nested; braces around anything else stay as they are."""
    items: list[list[str]] = []
    start = depth = 0
    for pos, char in enumerate(pattern):
        if char == "{":
            if depth == 0:
                items.append([pattern[start:pos]])
                start = pos
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                break
            if depth == 0:
                inner = pattern[start + 1:pos]
                options = _expression(inner)
                items.append(options if options is not None else [f"{{{s}}}" for s in expand(inner)])
                start = pos + 1
    if depth:
        raise EnergonError(f"unbalanced braces in {pattern!r}")
    items.append([pattern[start:]])
    return ["".join(p) for p in itertools.product(*items)]


def _expression(inner: str) -> Optional[list[str]]:
    """The strings of one brace expression, or None where it is none (``{}``, ``{1}``)."""
    if match := _INT_RANGE.match(inner):
        first, last, step = match[1], match[2], int(match[3] or 1) or 1
        padded = any(s.startswith(("0", "-0")) for s in (first, last) if s not in ("0", "-0"))
        width = max(len(first), len(last)) if padded else 0
        a, b = int(first), int(last)
        return [f"{i:0{width}d}" for i in (range(a, b + 1, step) if a < b else range(a, b - 1, -step))]
    if match := _CHAR_RANGE.match(inner):
        a, b, step = _ALPHABET.index(match[1]), _ALPHABET.index(match[2]), int(match[3] or 1) or 1
        return list(_ALPHABET[a:b + 1:step] if a < b else _ALPHABET[a:b - 1 if b else None:-step])
    parts, start, depth = [], 0, 0
    for pos, char in enumerate(inner):
        depth += (char == "{") - (char == "}")
        if char == "," and depth == 0:
            parts.append(inner[start:pos])
            start = pos + 1
    if not parts:
        return None
    parts.append(inner[start:])
    return [s for part in parts for s in expand(part)]
