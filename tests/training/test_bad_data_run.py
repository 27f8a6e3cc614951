"""End to end: a run over toy data plus a shard of bad samples and a cut-off shard trains, and
metrics.jsonl counts every skip by reason, and the truncated sample."""

from __future__ import annotations

import collections
import os
import shutil
import tarfile

import pytest

from megaomni.data.shards import iter_shard, list_shards
from tests.conftest import read_metrics, run_pretrain
from tests.data.helpers import bad_samples, conversation, members, write_shard
from tests.media_views import raw_audios


@pytest.mark.slow
def test_bad_samples_are_counted_in_metrics(toy_data, tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    shards = list_shards(toy_data)
    for path in [*shards, os.path.join(toy_data, "tokenizer.model")]:
        shutil.copy(path, data)
    bad = bad_samples(next(raw_audios(raw)[0][1] for raw in iter_shard(shards[0]) if raw_audios(raw)))
    long_answer = {"json": conversation(("user", "What is shown?"), ("assistant", "red square " * 100))}
    write_shard(str(data / "zz-bad.tar"), members({**{key: parts for key, (_, parts) in bad.items()},
                                                   "long_answer": long_answer}))
    with tarfile.open(shards[0]) as tar:  # cut before the third sample: two good ones, then nothing
        third = [m for m in tar if m.name.endswith(".json")][2]
    with open(shards[0], "rb") as f:
        (data / "zz-cut.tar").write_bytes(f.read(third.offset))

    proc = run_pretrain(f"data.path={data}", f"train.output_dir={out}", "train.iters=2", "train.warmup_iters=1",
                        "data.truncate=true")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    records = read_metrics(str(out))
    # The index finds all but media bad past their headers, which count in the step that meets them.
    late = {"cut_png": "bad_image", "cut_wav": "bad_audio"}
    expected = collections.Counter([reason for key, (reason, _) in bad.items() if key not in late] + ["corrupt_shard"])
    for record in records:
        extra = collections.Counter(record["skipped"]) - expected
        assert not expected - collections.Counter(record["skipped"]) and set(extra) <= set(late.values())
        assert record["skipped_samples"] == sum(record["skipped"].values())
    assert [r["truncated_samples"] for r in records] == [1, 1]
    log = proc.stdout + proc.stderr
    assert "truncated 1; skipped" in log and "bad_image 1 (first zz-bad.tar:corrupt_png: " in log
    assert "corrupt_shard 1 (first zz-cut.tar:" in log
