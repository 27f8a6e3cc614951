"""Where the data lives: every read of a data set's files goes through this module. A path with a
protocol (``s3://``, ``gs://``, ``hdfs://``, ``memory://``, ...) goes through ``fsspec`` and the
matching package (s3fs, gcsfs, ...); a plain path through the local file system. Shards are read
whole when indexed and by byte range when a sample is decoded."""

from __future__ import annotations

import collections
import os
import posixpath
from typing import BinaryIO

_OPEN = 8  # shard files a process keeps open for range reads


def is_remote(path: str) -> bool:
    return "://" in path


def _fs(path: str):
    try:
        import fsspec
    except ImportError as e:
        raise FileNotFoundError(f"data path {path}: reading it needs fsspec (pip install fsspec and the package "
                                "for its protocol, e.g. s3fs)") from e
    try:
        return fsspec.core.url_to_fs(path)
    except (ImportError, ValueError) as e:
        raise FileNotFoundError(f"data path {path}: {e}") from e


def join(directory: str, name: str) -> str:
    return posixpath.join(directory, name) if is_remote(directory) else os.path.join(directory, name)


def basename(path: str) -> str:
    return posixpath.basename(path) if is_remote(path) else os.path.basename(path)


def is_dir(path: str) -> bool:
    if not is_remote(path):
        return os.path.isdir(path)
    fs, inner = _fs(path)
    return fs.isdir(inner)


def is_file(path: str) -> bool:
    if not is_remote(path):
        return os.path.isfile(path)
    fs, inner = _fs(path)
    return fs.isfile(inner)


def list_files(directory: str, suffix: str) -> list[str]:
    """The files of ``directory`` whose names end in ``suffix``, sorted, as full paths."""
    if not is_remote(directory):
        return sorted(os.path.join(directory, n) for n in os.listdir(directory)
                      if n.endswith(suffix) and os.path.isfile(os.path.join(directory, n)))
    fs, inner = _fs(directory)
    return sorted(fs.unstrip_protocol(info["name"]) for info in fs.ls(inner, detail=True)
                  if info["type"] == "file" and info["name"].endswith(suffix))


def stat(path: str) -> tuple[int, float]:
    """(size in bytes, modification time or 0 where the store has none): what tells a changed file."""
    if not is_remote(path):
        info = os.stat(path)
        return info.st_size, info.st_mtime
    fs, inner = _fs(path)
    info = fs.info(inner)
    mtime = info.get("mtime") or info.get("LastModified") or info.get("created") or 0
    return int(info["size"]), float(mtime.timestamp() if hasattr(mtime, "timestamp") else mtime)


def open_file(path: str) -> BinaryIO:
    """A seekable binary reader."""
    if not is_remote(path):
        return open(path, "rb")
    fs, inner = _fs(path)
    return fs.open(inner, "rb")


class RangeReader:
    """Byte ranges of files, through a few files kept open (a worker reads many samples of the
    same shards)."""

    def __init__(self) -> None:
        self._files: collections.OrderedDict[str, BinaryIO] = collections.OrderedDict()

    def read(self, path: str, offset: int, count: int) -> bytes:
        f = self._files.pop(path, None) or open_file(path)
        self._files[path] = f
        while len(self._files) > _OPEN:
            self._files.popitem(last=False)[1].close()
        f.seek(offset)
        data = f.read(count)
        if len(data) != count:
            raise EOFError(f"{path}: {count} bytes at {offset} asked, {len(data)} read (the file changed?)")
        return data

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
