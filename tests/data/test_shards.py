from __future__ import annotations

import pytest

from megaomni.data.shards import index_shards, iter_shard, list_shards
from tests.data.helpers import write_shard
from tests.media_views import raw_audios, raw_images


def test_members_grouped_by_key_and_media_ordered(tmp_path):
    write_shard(str(tmp_path / "a.tar"), {
        "s1.json": b"[]", "s1.1.png": b"second", "s1.0.png": b"first", "s1.wav": b"clip", "s1.txt": b"ignored",
        "s2.png": b"only", "s2.json": b"{}", "s2.0.flac": b"f0", "s2.1.wav": b"w1",
    })
    s1, s2 = iter_shard(str(tmp_path / "a.tar"))
    assert (s1.key, s1.conversation, raw_images(s1), raw_audios(s1)) == (
        "s1", b"[]", [b"first", b"second"], [("wav", b"clip")])
    assert (s2.key, raw_images(s2), raw_audios(s2)) == ("s2", [b"only"], [("flac", b"f0"), ("wav", b"w1")])
    assert s1.shard == str(tmp_path / "a.tar")


def test_list_and_index(tmp_path):
    for name in ("b.tar", "a.tar"):
        write_shard(str(tmp_path / name), {f"{name[0]}.json": b"[]"})
    (tmp_path / "notes.txt").write_text("x")
    shards = list_shards(str(tmp_path))
    assert shards == [str(tmp_path / "a.tar"), str(tmp_path / "b.tar")]
    assert [s.key for s in index_shards(shards)] == ["a", "b"]


def test_no_shards_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: holds no"):
        list_shards(str(tmp_path))


def test_unreadable_shard_becomes_a_stand_in(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar file at all" * 30)
    (stand_in,) = iter_shard(str(bad))
    assert stand_in.error.reason == "corrupt_shard" and stand_in.where == "bad.tar"
    assert "from its start" in stand_in.error.detail
