"""Training streams its data: a run whose address space is capped (``RLIMIT_AS``, set when the
data loader is built: after the model, optimizer and process groups) at a fraction of what its
data set's media take decoded (and of its size on disk) trains to the end,
because each step decodes only its own micro-batches (the loader before decoded every sample
at start-up). The cap is shown to bite: the run's process cannot allocate twice it."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, read_metrics, run_pretrain
from tests.data.helpers import conversation, write_shard

pytestmark = pytest.mark.slow

# Bytes of address space the run may add for its data (new threads' stacks, 8 MiB each reserved,
# are in it).
CAP = 400 << 20
SIDE, PER_SHARD, SHARDS = 336, 128, 28  # 3584 noise images of 336 x 336 (1.35 MB each decoded)

WRAPPER = f"""
import ctypes, os, resource, sys
sys.path.insert(0, {ROOT!r})
ctypes.CDLL("libc.so.6").mallopt(-8, 1)  # M_ARENA_MAX: no 64 MiB arena reserved per thread
import pretrain_omni
from megaomni.training import trainer


class CappedLoader(trainer.OmniDataLoader):
    def __init__(self, *args, **kwargs):  # the run has its model, optimizer and process groups now
        with open("/proc/self/status") as f:
            size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (size + {CAP}, size + {CAP}))
        try:
            bytearray(2 * {CAP})
            print("cap not enforced")
            sys.exit(5)
        except MemoryError:
            print("cap enforced")
        super().__init__(*args, **kwargs)


trainer.OmniDataLoader = CappedLoader
sys.exit(pretrain_omni.main())
"""

def test_a_run_trains_on_data_many_times_its_memory(toy_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(os.path.join(toy_data, "tokenizer.model"), data)
    rng = np.random.default_rng(0)
    members = {}
    for i in range(PER_SHARD):
        pixels = Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))
        out = io.BytesIO()
        pixels.save(out, format="PNG")
        members[f"s{i:04d}.json"] = conversation(("user", "<image>\nWhat is shown?"), ("assistant", "red square"))
        members[f"s{i:04d}.png"] = out.getvalue()
    write_shard(str(data / "img-0000.tar"), members)
    for n in range(1, SHARDS):  # the same samples again: a data set many times the cap
        os.symlink(data / "img-0000.tar", data / f"img-{n:04d}.tar")
    decoded = SHARDS * PER_SHARD * SIDE * SIDE * 3 * 4  # float32 pixels of every image
    on_disk = SHARDS * os.path.getsize(data / "img-0000.tar")
    assert decoded > 10 * CAP and on_disk > 2 * CAP

    script = tmp_path / "capped.py"
    script.write_text(WRAPPER)
    proc = run_pretrain(f"data.path={data}", f"train.output_dir={tmp_path / 'run'}", "train.iters=3",
                        "train.warmup_iters=1", "checkpoint.save_last=false", "data.workers=0",
                        "model.audio.enabled=false", f"data.max_pixels={SIDE * SIDE}", script=str(script))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "cap enforced" in proc.stdout
    records = read_metrics(str(tmp_path / "run"))
    assert [r["iteration"] for r in records] == [1, 2, 3] and all(r["loss"] > 0 for r in records)
    assert f"{SHARDS * PER_SHARD} samples from {SHARDS} shards" in proc.stdout
