"""WebDataset-style tar shards: members ``KEY.EXT`` grouped into one raw sample per key.

Per key: ``KEY.json`` (the conversation) and each modality's members (its sources,
megaomni.media.registry): ``KEY.EXT`` or ``KEY.0.EXT``, ``KEY.1.EXT``, ... in placeholder order
(images ``KEY.png``/``KEY.jpg``, audio ``KEY.wav``/``KEY.flac``), or a medium made of numbered
parts, ``KEY.FIELD.0.EXT``, ... (at most one video, its frames ``KEY.video.0.png``, ... in time
order). Bytes are not decoded here, so that a bad member fails its sample, not the shard; a
shard unreadable from some point on keeps the samples before that point.
"""

from __future__ import annotations

import functools
import io
import os
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import Iterator, Optional

from megaomni.data import energon, storage
from megaomni.errors import BadSample
from megaomni.media import registry
from megaomni.media.modality import Source

# What reading a damaged shard raises: tarfile's errors, short reads, bad gzip, bad numbers in headers.
SHARD_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError, zlib.error)


@dataclass
class RawSample:
    key: str
    shard: str
    conversation: Optional[bytes] = None  # the KEY.json bytes, parsed when the sample is built
    # Source placeholder -> its members (extension, bytes) in order: one per medium, or the parts
    # of its one medium (a video's frames in time order).
    members: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)
    unread: list[str] = field(default_factory=list)  # names of members of a kind this reader does not decode
    error: Optional[BadSample] = None  # a problem of the members themselves: the sample fails with it
    # Its members' bytes in the shard, headers included (the index records them; read_sample reads them back).
    offset: int = 0
    nbytes: int = 0

    def count(self, source: Source) -> int:
        """Media of ``source`` in this sample."""
        found = len(self.members.get(source.placeholder, ()))
        return min(found, 1) if source.one_medium else found

    @property
    def where(self) -> str:
        """``SHARD.tar:KEY`` (``SHARD.tar`` for a whole-shard problem), for logs."""
        name = storage.basename(self.shard)
        return f"{name}:{self.key}" if self.key else name


def list_shards(path: str) -> list[str]:
    """The ``*.tar`` files of directory ``path``, sorted; of a directory ``energon prepare``
    indexed, its ``train`` split's shards (subfolders too), in split order (megaomni/data/energon.py)."""
    if not storage.is_dir(path):
        raise FileNotFoundError(f"data path {path}: no such directory")
    if energon.is_prepared(path):
        try:
            return energon.shards(path)
        except energon.EnergonError as e:
            raise energon.EnergonError(f"data path {path}: {e}") from e
    shards = storage.list_files(path, ".tar")
    if not shards:
        raise FileNotFoundError(f"data path {path}: holds no *.tar shards")
    return shards


def _split_name(name: str) -> tuple[str, Optional[int], str]:
    """``dir/KEY.3.png`` -> (``dir/KEY``, 3, ``png``); ``KEY.png`` -> (``KEY``, None, ``png``);
    a video frame ``KEY.video.3.png`` -> (``KEY``, 3, ``video.png``). The key ends at the first
    dot of the base name, as in WebDataset."""
    head, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    index: Optional[int] = None
    if "." in ext:
        number, _, ext = ext.rpartition(".")
        kind, _, number = number.rpartition(".")  # "video.3": frame 3 of the video
        # -1: not a media index (``KEY.meta.json``, ``KEY.video.png``: another field), ignored by the caller
        index = int(number) if kind in ("", *_kinds().fields) and number.isascii() and number.isdigit() else -1
        ext = f"{kind}.{ext}" if kind else ext
    return os.path.join(head, stem), index, ext.lower()


def _check_end(tar: tarfile.TarFile) -> None:
    """tarfile ends its member loop quietly at a truncated or garbled header; a whole shard has
    only zero blocks from there on (its end-of-archive marker and padding)."""
    tar.fileobj.seek(tar.offset)
    rest = tar.fileobj.read(tarfile.RECORDSIZE)
    if not rest:
        raise tarfile.ReadError(f"ends at byte {tar.offset} without the end-of-archive marker (truncated)")
    while rest:
        if rest.strip(b"\0"):
            raise tarfile.ReadError(f"a garbled header, or data after the end marker, at byte {tar.offset}")
        rest = tar.fileobj.read(tarfile.RECORDSIZE)


def _media_order(stem: str, kind: str, found: list[tuple[Optional[int], str]]) -> Optional[BadSample]:
    """``found`` (index, member name) of one kind, members ``STEM.N.*``, must be one unnumbered
    file or ``0..n-1``: anything else leaves a placeholder's (or a frame's) file missing or ambiguous."""
    indices = sorted(-1 if index is None else index for index, _ in found)
    names = ", ".join(sorted(name for _, name in found))
    if len(set(indices)) < len(indices) or (-1 in indices and len(indices) > 1):
        return BadSample("duplicate_member", f"{kind} members that claim the same place ({names})")
    if -1 not in indices and indices != list(range(len(indices))):
        missing = min(set(range(len(indices) + 1)) - set(indices))
        return BadSample("missing_media", f"no {stem}.{missing}.* {kind} member (have {names})")
    return None


@dataclass(frozen=True)
class _Kinds:
    """What the registered modalities' sources make of member extensions."""

    sources: tuple[Source, ...]
    fields: frozenset[str]  # KEY.FIELD.N.EXT: the FIELDs
    read: frozenset[str]  # extensions read (KEY.json and every source's)
    unread: frozenset[str]  # extensions of media this reader does not decode

    def is_unread(self, ext: str) -> bool:
        """A medium this reader does not decode (a source's ``unread_exts``), or such a part
        (``KEY.video.3.webp``). They are not read, but named when their sample's placeholders
        lack files, so the skip says why (unsupported_media, not placeholder_mismatch)."""
        return any(ext.removeprefix(f"{f}.") in self.unread for f in ("", *self.fields)
                   if not f or ext.startswith(f"{f}."))


@functools.lru_cache(maxsize=8)
def _kinds_of(modalities: tuple) -> _Kinds:
    sources = tuple(s for m in modalities for s in m.sources)
    return _Kinds(sources, frozenset(s.field for s in sources if s.field),
                  frozenset(("json", *(e for s in sources for e in s.member_exts))),
                  frozenset(e for s in sources for e in s.unread_exts))


def _kinds() -> _Kinds:
    """For the modalities registered now (computed once for each registry state)."""
    return _kinds_of(tuple(registry.modalities()))


def _sample(key: str, path: str, members: list[tuple[str, Optional[int], str, bytes]]) -> RawSample:
    """One key's members as a RawSample, with ``error`` set where they do not make one sample."""
    conversations = [data for _, _, ext, data in members if ext == "json"]
    media = sorted(members, key=lambda m: -1 if m[1] is None else m[1])  # KEY.png first, then KEY.0.png, ...
    kinds = _kinds()
    sources = kinds.sources
    sample = RawSample(key=key, shard=path, conversation=conversations[0] if conversations else None,
                       unread=[name for name, _, ext, _ in members if kinds.is_unread(ext)])
    for source in sources:
        found = [(ext.removeprefix(f"{source.field}."), data) for _, _, ext, data in media if ext in source.member_exts]
        if found:
            sample.members[source.placeholder] = found
    if len(conversations) > 1:
        sample.error = BadSample("duplicate_member", f"{len(conversations)} {key}.json members")
    # Not an unread part: the other parts would make a shorter medium that still matches its placeholder.
    for source in sources:
        if source.one_medium and (unread_parts := [name for name, _, ext, _ in members
                                                   if kinds.is_unread(ext) and ext.startswith(f"{source.field}.")]):
            sample.error = sample.error or BadSample(
                "unsupported_media", f"{source.kind}s not read: {', '.join(unread_parts)} "
                f"({source.kind}s: {', '.join(source.exts)})")
    for source in sources:
        stem = f"{key}.{source.field}" if source.field else key
        sample.error = sample.error or _media_order(
            stem, source.kind, [(i, n) for n, i, ext, _ in members if ext in source.member_exts])
    return sample


Member = tuple[str, Optional[int], str, bytes]  # (name, index, ext, bytes)


def _read_members(tar: tarfile.TarFile, groups: dict[str, list[Member]], spans: dict[str, list[int]]) -> None:
    """Reads ``tar``'s members into ``groups`` by key, and each key's byte span into ``spans``."""
    kinds = _kinds()
    for member in tar:
        key, index, ext = _split_name(member.name)
        if not member.isfile() or index == -1:
            continue
        if ext in kinds.read:
            data = tar.extractfile(member).read()
        elif kinds.is_unread(ext):
            data = b""
        else:
            continue
        groups.setdefault(key, []).append((member.name, index, ext, data))
        span = spans.setdefault(key, [member.offset, 0])
        span[1] = max(span[1], member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE)


def iter_shard(path: str) -> Iterator[RawSample]:
    """Raw samples of one shard, in order of first appearance of their key, each with the byte
    span of its members. Members with other extensions are ignored (WebDataset shards may carry
    fields this pipeline does not read).

    A shard unreadable from some point on (cut short, a garbled header, data past its end
    marker) yields the samples read before that point, then a ``corrupt_shard`` stand-in; a
    shard with no sample yields an ``empty_shard`` one. A stand-in is a RawSample with
    ``error`` set: the loader counts it as it counts any bad sample, and training goes on.
    Only whole members are kept, so a sample cut at that point lacks one: its JSON or a file
    for a placeholder, which :func:`~megaomni.data.sample.build_sample` refuses."""
    if storage.stat(path)[0] == 0:
        yield RawSample(key="", shard=path, error=BadSample("empty_shard", "a 0-byte file"))
        return
    groups: dict[str, list[Member]] = {}
    spans: dict[str, list[int]] = {}
    tar, broken = None, None
    try:
        with storage.open_file(path) as f, tarfile.open(fileobj=f) as tar:
            _read_members(tar, groups, spans)
            _check_end(tar)
    except SHARD_ERRORS as e:
        broken = str(e).splitlines()[0] if str(e) else type(e).__name__
    name = tar.members[-1].name if tar is not None and tar.members else ""  # the last member read
    for sample_key, group in groups.items():
        sample = _sample(sample_key, path, group)
        sample.offset, end = spans[sample_key]
        sample.nbytes = end - sample.offset
        yield sample
    if broken is not None:
        at = f"at or after member {name}" if name else "from its start"
        yield RawSample(key=_split_name(name)[0] if name else "", shard=path, error=BadSample(
            "corrupt_shard", f"unreadable {at}: {broken}; the rest of the shard is skipped"))
    elif not groups:
        yield RawSample(key="", shard=path, error=BadSample("empty_shard", "holds no samples"))


def read_sample(path: str, offset: int, nbytes: int, reader: storage.RangeReader) -> RawSample:
    """The raw sample whose members span ``nbytes`` bytes at ``offset`` of shard ``path`` (as
    :func:`iter_shard` found them): one range read, no scan. A shard whose bytes there do not
    parse any more (changed since it was indexed) gives a ``corrupt_shard`` stand-in."""
    groups: dict[str, list[Member]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(reader.read(path, offset, nbytes))) as tar:
            _read_members(tar, groups, {})
    except SHARD_ERRORS as e:
        return RawSample(key="", shard=path, error=BadSample(
            "corrupt_shard", f"bytes {offset}..{offset + nbytes} unreadable ({e}): changed since it was indexed?"))
    if not groups:
        return RawSample(key="", shard=path, error=BadSample(
            "corrupt_shard", f"no members at bytes {offset}..{offset + nbytes}: changed since it was indexed?"))
    key = next(iter(groups))  # the span starts at its sample's first member; another key's members are not its
    sample = _sample(key, path, groups[key])
    sample.offset, sample.nbytes = offset, nbytes
    return sample


def index_shards(paths: list[str]) -> list[RawSample]:
    """Every raw sample of ``paths``, in shard order, all bytes in memory (for tools and tests;
    the loader reads samples by range, :func:`read_sample`)."""
    return [sample for path in paths for sample in iter_shard(path)]
