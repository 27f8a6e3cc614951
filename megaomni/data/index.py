"""A data set's sample index: for each usable sample, where its members lie (shard, byte span) and
the sizes the step planner needs (LLM tokens; per modality its items, rows and squared rows),
found from the text and the media headers without decoding any media (``Modality.measure``).
Samples that fail there are left out and counted by reason, as the loader always reported them.

On disk, one folder per data set and settings, ``DIR/.megaomni-index/KEY/`` (``data.index_dir``
elsewhere): ``meta.json`` (what it was built with, each shard's size and time, the skips with
their first cases, the truncated count) and one ``.npy`` per array, memory-mapped when read:
60 bytes a sample with two modalities. ``KEY`` hashes what it was built with, so runs with other
pixel limits or another tokenizer use (or build) their own; a shard changed since is a stale
index. Built in parallel over shards (``workers``), resumable: a finished shard is kept in
``KEY.parts/`` until the whole index is written."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import numpy as np

from megaomni.config import OmniConfig
from megaomni.data import storage
from megaomni.data.sample import measure_sample
from megaomni.data.shards import iter_shard, list_shards
from megaomni.data.sizes import SampleSizes
from megaomni.data.skip_tally import SkipTally
from megaomni.data.tokenizer import Tokenizer
from megaomni.errors import BadSample
from megaomni.media import registry

log = logging.getLogger("megaomni.data.index")  # beside the loader's own line per data set

FORMAT = 1
FOLDER = ".megaomni-index"
ARRAYS = {"shard": np.int32, "offset": np.int64, "nbytes": np.int32, "tokens": np.int32,
          "items": np.int32, "rows": np.int64, "squares": np.int64}  # the last three [samples, modalities]
# data fields that change no sample's tokens or sizes: one index serves every value of them
# (the budgets are applied when the loader opens the index). Any other field is in the key.
PLAN_ONLY = frozenset({"path", "tokenizer", "packing", "max_tokens", "max_patches", "max_audio_frames",
                       "micro_batch_size", "global_batch_size", "global_batch_tokens", "micro_batch_multiple",
                       "decoder", "video_fps", "zero_media", "seed", "workers", "prefetch", "prefetch_steps",
                       "index", "index_dir"})
# The files of a tokenizer folder that make its ids.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model")


class StaleIndex(ValueError):
    """An index that does not describe the data set or the settings (data.index=require)."""


def _tokenizer_digest(path: str) -> str:
    digest = hashlib.sha256()
    names = [n for n in _TOKENIZER_FILES if os.path.isfile(os.path.join(path, n))] if os.path.isdir(path) else [""]
    for name in names:
        digest.update(name.encode())
        with open(os.path.join(path, name) if name else path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def built_with(tokenizer: Tokenizer, cfg: OmniConfig) -> dict:
    """What a data set's index depends on: the tokenizer's files, the data fields outside
    :data:`PLAN_ONLY`, and what each modality's measure reads (``Modality.size_fields``; False
    where it is disabled, its samples then skipped)."""
    data = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in PLAN_ONLY}
    settings = {"format": FORMAT, "tokenizer": _tokenizer_digest(tokenizer.path), "data": data,
                "modalities": {m.name: m.enabled(cfg.model) and m.size_fields(cfg) for m in registry.modalities()}}
    return json.loads(json.dumps(settings))  # as meta.json reads back (tuples as lists), to compare equal


def _key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def index_root(path: str, cfg: OmniConfig) -> str:
    """Where ``path``'s indexes live: in the data set's folder, or ``data.index_dir`` (needed for a
    remote or read-only data set; a folder per data set there)."""
    if cfg.data.index_dir:
        return os.path.join(cfg.data.index_dir, hashlib.sha256(path.encode()).hexdigest()[:16])
    if storage.is_remote(path):
        raise StaleIndex(f"data.path={path}: a remote data set's index needs a local data.index_dir")
    return os.path.join(path, FOLDER)


@dataclass
class DatasetIndex:
    path: str
    shards: list[str]  # the shards' paths, in order
    modalities: tuple[str, ...]  # the columns of items / rows / squares
    arrays: dict[str, np.ndarray]  # ARRAYS, one row per usable sample, in shard order
    skips: dict[str, list]  # reason -> [count, first "WHERE: DETAIL"]
    truncated: int  # samples cut to data.seq_length (data.truncate)
    folder: str = ""  # where it is on disk ("" : in memory only)
    seconds: float = 0.0  # to open (or build) it

    def __len__(self) -> int:
        return len(self.arrays["tokens"])

    def sizes(self, i: int) -> SampleSizes:
        items, rows, squares = (self.arrays[k][i] for k in ("items", "rows", "squares"))
        return SampleSizes(int(self.arrays["tokens"][i]), tuple(
            (name, int(items[m]), int(rows[m]), int(squares[m])) for m, name in enumerate(self.modalities) if items[m]))

    def location(self, i: int) -> tuple[str, int, int]:
        """(shard path, byte offset, byte count) of sample ``i``'s members."""
        return (self.shards[int(self.arrays["shard"][i])], int(self.arrays["offset"][i]),
                int(self.arrays["nbytes"][i]))

    def tally(self) -> SkipTally:
        tally = SkipTally()
        for reason, (count, first) in self.skips.items():
            tally.counts[reason] = count
            tally.first[reason] = first
        return tally


def index_shard(path: str, tokenizer: Tokenizer, cfg: OmniConfig) -> dict:
    """One shard's rows of the index (lists; shard column 0) and its skips and truncations."""
    names = [m.name for m in registry.modalities()]
    rows: dict[str, list] = {k: [] for k in ARRAYS}
    tally, truncated = SkipTally(), 0
    for raw in iter_shard(path):
        try:
            sizes, cut = measure_sample(raw, tokenizer, cfg)
        except BadSample as error:
            tally.add(raw.where, error)
            continue
        media = {name: (items, total, squares) for name, items, total, squares in sizes.media}
        for key, value in (("shard", 0), ("offset", raw.offset), ("nbytes", raw.nbytes), ("tokens", sizes.tokens)):
            rows[key].append(value)
        for column, part in (("items", 0), ("rows", 1), ("squares", 2)):
            rows[column].append([media[n][part] if n in media else 0 for n in names])
        truncated += cut
    return {"rows": rows, "skips": {r: [n, tally.first[r]] for r, n in tally.counts.items()}, "truncated": truncated}


def _assemble(path: str, shards: list[str], parts: list[dict], folder: str = "") -> DatasetIndex:
    names = tuple(m.name for m in registry.modalities())
    arrays = {}
    for key, dtype in ARRAYS.items():
        chunks = []
        for number, part in enumerate(parts):
            values = np.asarray(part["rows"][key], dtype=dtype)
            if key == "shard":
                values = np.full(len(values), number, dtype=dtype)
            chunks.append(values.reshape(-1, len(names)) if key in ("items", "rows", "squares") else values)
        arrays[key] = np.concatenate(chunks) if chunks else np.zeros(0, dtype)
    skips: dict[str, list] = {}
    for part in parts:  # shard order: the first case of a reason is the earliest shard's
        for reason, (count, first) in part["skips"].items():
            skips.setdefault(reason, [0, first])[0] += count
    return DatasetIndex(path, shards, names, arrays, dict(sorted(skips.items())),
                        sum(p["truncated"] for p in parts), folder)


def _shard_name(path: str, shard: str) -> str:
    """``shard``'s name within data set ``path``: its file name, or its path below ``path`` (an
    Energon data set's shards may lie in subfolders, two of the same file name)."""
    root = path.rstrip("/") + "/"
    return shard[len(root):] if shard.startswith(root) else storage.basename(shard)


def _shard_stats(path: str, shards: list[str]) -> list[list]:
    return [[_shard_name(path, s), *storage.stat(s)] for s in shards]


def _read(folder: str, path: str, shards: list[str]) -> DatasetIndex:
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    arrays = {k: np.load(os.path.join(folder, f"{k}.npy"), mmap_mode="r") for k in ARRAYS}
    return DatasetIndex(path, shards, tuple(meta["modalities"]), arrays, meta["skips"], meta["truncated"], folder)


def _write(index: DatasetIndex, folder: str, meta: dict) -> None:
    """Atomically: the index appears whole or not at all (another rank may write it at once)."""
    tmp = f"{folder}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for key, values in index.arrays.items():
        np.save(os.path.join(tmp, f"{key}.npy"), np.ascontiguousarray(values))
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump({**meta, "modalities": list(index.modalities), "skips": index.skips,
                   "truncated": index.truncated, "samples": len(index)}, f, indent=1)
    try:
        os.replace(tmp, folder)
    except OSError:  # written meanwhile by another process: the same index
        shutil.rmtree(tmp, ignore_errors=True)


def _stale_reason(folder: str, settings: dict, stats: list[list]) -> Optional[str]:
    """Why the index at ``folder`` does not serve: another shard list, or a shard changed."""
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    if meta.get("built_with") != settings:
        return "it was built with other settings"
    old = {name: (size, mtime) for name, size, mtime in meta["shards"]}
    new = {name: (size, mtime) for name, size, mtime in stats}
    for name in sorted(old.keys() | new.keys()):
        if name not in new:
            return f"shard {name} is gone"
        if name not in old:
            return f"shard {name} is new"
        if old[name] != new[name]:
            return f"shard {name} changed (size {old[name][0]} -> {new[name][0]}, or its time)"
    return None


def _differences(root: str, settings: dict) -> str:
    """How the data set's other indexes' settings differ from ``settings`` (the newest one's)."""
    others = []
    for name in os.listdir(root) if os.path.isdir(root) else []:
        meta = os.path.join(root, name, "meta.json")
        if os.path.isfile(meta):
            with open(meta) as f:
                others.append((os.path.getmtime(meta), json.load(f).get("built_with", {})))
    if not others:
        return "none was built"
    theirs = max(others, key=lambda o: o[0])[1]

    def flat(tree, prefix=""):
        return {k: v for key, value in tree.items() for k, v in
                (flat(value, f"{prefix}{key}.").items() if isinstance(value, dict) else [(prefix + key, value)])}

    ours, old = flat(settings), flat(theirs)
    changed = [f"{k}: {old.get(k)} there, {ours.get(k)} now" for k in sorted(ours.keys() | old.keys())
               if ours.get(k) != old.get(k)]
    return "the newest one there was built with other settings (" + "; ".join(changed[:4]) + ")"


Mapper = Callable[[Callable, list], Iterable]  # (function of a shard path, shard paths) -> results in order


def build_index(path: str, tokenizer: Tokenizer, cfg: OmniConfig, mapper: Mapper, write: bool = True,
                progress: Callable[[int, int, int], None] | None = None) -> DatasetIndex:
    """Index every shard of ``path`` (``mapper`` runs :func:`index_shard` over them, in worker
    processes or not); written to its folder when ``write`` (resuming a build cut short)."""
    shards, settings = list_shards(path), built_with(tokenizer, cfg)
    folder = os.path.join(index_root(path, cfg), _key(settings))
    parts_dir = folder + ".parts"
    stats = _shard_stats(path, shards)
    parts: dict[int, dict] = {}
    if write and os.path.isdir(parts_dir):  # a build cut short: keep the shards it finished
        for i, (name, size, mtime) in enumerate(stats):
            done = os.path.join(parts_dir, f"{i:06d}.json")
            if os.path.isfile(done):
                with open(done) as f:
                    part = json.load(f)
                if part["shard"] == [name, size, mtime]:
                    parts[i] = part
    todo = [i for i in range(len(shards)) if i not in parts]
    if write:
        os.makedirs(parts_dir, exist_ok=True)
    samples = sum(len(p["rows"]["tokens"]) for p in parts.values())
    for i, part in zip(todo, mapper(index_shard, [shards[i] for i in todo])):
        part["shard"] = stats[i]
        parts[i] = part
        samples += len(part["rows"]["tokens"])
        if write:
            with open(os.path.join(parts_dir, f"{i:06d}.json.tmp"), "w") as f:
                json.dump(part, f)
            os.replace(os.path.join(parts_dir, f"{i:06d}.json.tmp"), os.path.join(parts_dir, f"{i:06d}.json"))
        if progress:
            progress(len(parts), len(shards), samples)
    index = _assemble(path, shards, [parts[i] for i in range(len(shards))], folder if write else "")
    if write:
        _write(index, folder, {"built_with": settings, "shards": stats})
        shutil.rmtree(parts_dir, ignore_errors=True)
    return index


def index_status(path: str, tokenizer: Tokenizer, cfg: OmniConfig) -> tuple[str, Optional[str]]:
    """Where ``path``'s index for these settings is (or goes), and why it does not serve (None:
    it does)."""
    settings = built_with(tokenizer, cfg)
    root = index_root(path, cfg)
    folder = os.path.join(root, _key(settings))
    if not os.path.isfile(os.path.join(folder, "meta.json")):
        return folder, f"no index for these settings: {_differences(root, settings)}"
    return folder, _stale_reason(folder, settings, _shard_stats(path, list_shards(path)))


def open_index(path: str, tokenizer: Tokenizer, cfg: OmniConfig, mapper: Mapper) -> DatasetIndex:
    """``path``'s index for these settings. Missing or stale: built (and written into the data set,
    where it can be) with ``data.index=auto``; an error naming why with ``data.index=require``."""
    started = time.perf_counter()
    folder, why = index_status(path, tokenizer, cfg)
    root = os.path.dirname(folder)
    if why is None:
        index = _read(folder, path, list_shards(path))
        index.seconds = time.perf_counter() - started
        return index
    if cfg.data.index == "require":
        raise StaleIndex(f"data.path={path}: {why} (data.index=require); build it: python tools/index_data.py "
                         f"{path} --config YOUR_RECIPE.yaml")
    try:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)  # stale
        index = build_index(path, tokenizer, cfg, mapper)
    except OSError as e:  # a read-only data set: the index stays in memory
        log.warning("data: could not write an index into %s (%s): kept in memory; set data.index_dir", root, e)
        index = build_index(path, tokenizer, cfg, mapper, write=False)
    index.seconds = time.perf_counter() - started
    log.info("data: indexed %s (%s; %d samples, %.1f s)", path, why, len(index), index.seconds)
    return index
