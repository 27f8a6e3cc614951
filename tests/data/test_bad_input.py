"""Bad input: each broken sample or shard is skipped under its own reason, counted, and named in
the load log line; the good samples around it load exactly as from a clean shard; data.truncate
cuts an over-long sample to a prefix of itself, never through a media run."""

from __future__ import annotations

import collections

import pytest
import torch

from megaomni.data.sample import build_sample
from megaomni.errors import BadSample
from tests.data.helpers import (
    assert_same_samples,
    bad_samples,
    conversation,
    good_samples,
    load,
    members,
    png,
    raw,
    shard_of_images,
    write_shard,
)
from tests.media_views import audios, images


def test_each_bad_sample_is_skipped_under_its_reason(cfg, tokenizer, clip, tmp_path, caplog):
    good, bad = good_samples(clip), bad_samples(clip)
    (tmp_path / "clean").mkdir()
    write_shard(str(tmp_path / "clean" / "clean.tar"), members(good))
    clean, _ = load(cfg, tokenizer, tmp_path / "clean", caplog)
    # Good samples before, between and after the bad ones.
    keys = ["g0", *list(bad)[:8], "g1", "g2", *list(bad)[8:], "g3"]
    (tmp_path / "mixed").mkdir()
    write_shard(str(tmp_path / "mixed" / "mixed.tar"), members({k: good[k] if k in good else bad[k][1] for k in keys}))

    loader, line = load(cfg, tokenizer, tmp_path / "mixed", caplog)
    # Media bad only past their headers pass the index (it decodes nothing) and fail when decoded.
    late = {"cut_png", "cut_wav"}
    found = collections.Counter(reason for key, (reason, _) in bad.items() if key not in late)
    assert loader.skipped == dict(sorted(found.items()))
    decoded = loader.samples.skipped()
    assert decoded.counts == {"bad_image": 1, "bad_audio": 1}
    assert decoded.first["bad_image"].startswith("mixed.tar:cut_png: ")
    assert decoded.first["bad_audio"].startswith("mixed.tar:cut_wav: ")
    assert_same_samples(loader.samples, clean.samples)
    assert f"{4 + len(late)} samples from 1 shards" in line and f"skipped {len(bad) - len(late)}: " in line
    for reason, count in found.items():  # each reason: its count and where its first case is
        first = next(key for key in keys if key in bad and key not in late and bad[key][0] == reason)
        assert f"{reason} {count} (first mixed.tar:{first}: " in line, (reason, line)


@pytest.mark.parametrize("damage,kept,skipped", [
    ("cut_inside_a_member", 3, {"placeholder_mismatch": 1}),  # s3.json read, s3.png cut: s3 lacks its image
    ("cut_between_members", 3, {}),
    ("garbled_header", 3, {"placeholder_mismatch": 1}),  # tarfile would stop there quietly
    ("data_after_end_marker", 6, {}),  # two tar files in one: tarfile would read the first only
])
def test_corrupt_shard_keeps_the_samples_before_it(cfg, tokenizer, tmp_path, caplog, damage, kept, skipped):
    path = tmp_path / "a-broken.tar"
    infos = shard_of_images(path, 6)
    whole = path.read_bytes()
    s3_json, s3_png = infos["s3.json"], infos["s3.png"]
    broken = {"cut_inside_a_member": whole[:s3_png.offset_data + s3_png.size // 2],
              "cut_between_members": whole[:s3_json.offset],
              "garbled_header": whole[:s3_png.offset] + b"\xff" * 512 + whole[s3_png.offset + 512:],
              "data_after_end_marker": whole + whole}[damage]
    path.write_bytes(broken)
    (tmp_path / "b-whole.tar").write_bytes(whole)  # the next shard is read as usual

    loader, line = load(cfg, tokenizer, tmp_path, caplog)
    assert [s.key for s in loader.samples] == [f"s{i}" for i in range(kept)] + [f"s{i}" for i in range(6)]
    assert loader.skipped == dict(sorted({"corrupt_shard": 1, **skipped}.items()))
    assert "corrupt_shard 1 (first a-broken.tar:" in line and "the rest of the shard is skipped" in line


def test_empty_shards_are_counted(cfg, tokenizer, tmp_path, caplog):
    (tmp_path / "a-zero-bytes.tar").write_bytes(b"")
    write_shard(str(tmp_path / "b-no-members.tar"), {})
    write_shard(str(tmp_path / "c-other-fields.tar"), {"x.txt": b"a caption", "x.cls": b"3"})
    shard_of_images(tmp_path / "d-good.tar", 2)
    loader, line = load(cfg, tokenizer, tmp_path, caplog)
    assert [s.key for s in loader.samples] == ["s0", "s1"]
    assert loader.skipped == {"empty_shard": 3}
    assert "empty_shard 3 (first a-zero-bytes.tar: a 0-byte file)" in line


def media_runs(sample, pad_ids) -> list[tuple[int, int]]:
    """(start, end) of each run of one media pad id (the test's placeholders never touch)."""
    runs, ids = [], sample.tokens.tolist()
    for t, token in enumerate(ids):
        if token in pad_ids and (t == 0 or ids[t - 1] != token):
            runs.append([t, t])
        if token in pad_ids:
            runs[-1][1] = t + 1
    return [tuple(r) for r in runs]


def test_truncation_is_a_prefix_that_keeps_media_runs_whole(cfg, tokenizer, clip):
    sample = raw(conversation(("user", "What is shown?"), ("assistant", "red square"),
                              ("user", "And <image> with <audio>?"), ("assistant", "low")),
                 images=[png(84, 56)], audios=[clip])
    full = build_sample(sample, tokenizer, cfg)
    pads = (tokenizer.media_pad_id("vision"), tokenizer.media_pad_id("audio"))
    runs = media_runs(full, pads)
    assert [end - start for start, end in runs] == [6, 26]
    cfg.data.truncate = True
    outcomes = collections.Counter()
    for length in range(1, full.tokens.numel()):
        cfg.data.seq_length = length
        splits = any(start < length < end for start, end in runs)
        if splits or not full.loss_mask[:length].any():
            with pytest.raises(BadSample) as e:
                build_sample(sample, tokenizer, cfg)
            assert e.value.reason == "too_long"
            outcomes["split" if splits else "no answer"] += 1
            continue
        cut = build_sample(sample, tokenizer, cfg)
        assert cut.tokens.numel() == length and cut.truncated_from == full.tokens.numel()
        for f in ("tokens", "labels", "loss_mask"):
            assert torch.equal(getattr(cut, f), getattr(full, f)[:length]), (length, f)
        # Media whose run was cut off go with it; the others stay whole.
        assert len(images(cut)) + len(audios(cut)) == sum(end <= length for _, end in runs)
        assert media_runs(cut, pads) == [r for r in runs if r[1] <= length]
        outcomes[len(images(cut)) + len(audios(cut))] += 1
    assert outcomes["split"] == 5 + 25 and outcomes["no answer"] > 0 and all(outcomes[n] > 0 for n in (0, 1, 2))


def test_loader_truncates_only_where_configured(cfg, tokenizer, clip, tmp_path, caplog):
    long_answer = {"json": conversation(("user", "What is shown?"), ("assistant", "red square " * 40))}
    write_shard(str(tmp_path / "a.tar"), members({**good_samples(clip), "long_answer": long_answer,
                                                  "too_long": bad_samples(clip)["too_long"][1]}))
    cfg.data.seq_length = 64
    loader, line = load(cfg, tokenizer, tmp_path, caplog)
    assert loader.skipped == {"too_long": 2} and loader.truncated == 0 and "truncated" not in line
    cfg.data.truncate = True
    loader, line = load(cfg, tokenizer, tmp_path, caplog)
    assert loader.skipped == {"too_long": 1} and loader.truncated == 1 and "truncated 1" in line
    (cut,) = [s for s in loader.samples if s.key == "long_answer"]
    assert cut.tokens.numel() == 64 and cut.truncated_from > 64
