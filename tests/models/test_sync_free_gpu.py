"""On the GPU a micro-batch's forward and backward never make the host wait for the GPU.

A host sync inside a pipeline step (``.item()``, ``.tolist()`` of a GPU tensor, boolean
indexing, a copy from pageable memory) stops the host until every queued kernel and every
receive the stream waits on is done, so the next action's kernels are launched only then. The
check: CUDA's sync debug mode set to "error" around a packed micro-batch of text, images, a
video and audio, through the encoders, the merge and the LLM, in bf16 (the flash varlen path)
and fp32 (the block-mask path), after a first pass that compiles the layers; the losses must
still equal the same model's in float64. Runs where CUDA is, on its own (the other model tests
start a CPU process group in this process): ``pytest tests/models/test_sync_free_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from megaomni.data.collate import collate_packed
from tests.media_views import run_model
from tests.models.test_packed import _sample
from tests.models.test_parts import AUDIO_PAD, IMAGE_PAD, VOCAB, randomize_, small_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def cuda_state():
    from megaomni.platform.distributed import init_distributed

    if dist.is_initialized() and dist.get_backend() != "nccl":
        pytest.skip("a CPU process group exists in this process: run this file on its own")
    cfg = small_config()
    cfg.train.device = "cuda"
    init_distributed(cfg)
    return cfg


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 5e-2), (torch.float32, 2e-3)])
def test_packed_micro_batch_runs_without_host_sync(cuda_state, dtype, tol):
    from megaomni.models.build import build_model

    cfg = cuda_state
    torch.manual_seed(0)
    pads = {"vision": IMAGE_PAD, "audio": AUDIO_PAD}.__getitem__
    model = build_model(cfg, VOCAB, pads)
    randomize_(model)
    reference = build_model(cfg, VOCAB, pads)
    reference.load_state_dict(model.state_dict())
    reference.cuda().double().eval()
    model.cuda().to(dtype).eval()
    samples = [
        _sample(cfg, 1, text=7),
        _sample(cfg, 2, text=4, grids=[(2, 4)]),
        _sample(cfg, 3, text=2, clips=[9]),
        _sample(cfg, 4, text=5, grids=[(4, 4), (2, 2)], clips=[6]),
        _sample(cfg, 7, text=3, grids=[(2, 2)] * 3, times=[0, 1, 2]),
    ]
    batch = collate_packed(samples, pad_id=0, length=sum(s.tokens.numel() for s in samples) + 5)
    with torch.no_grad():
        expected = run_model(reference, batch.to("cuda"))
    on_gpu = batch.to("cuda")
    # One pass first: on a GPU the layers are compiled whole (megaomni.ops.kernels), and inductor's
    # compilation reads values on the host; what is checked is every step after it.
    run_model(model, on_gpu).float().sum().backward()
    model.zero_grad()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = run_model(model, on_gpu)
        loss.float().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(loss.double(), expected.double(), rtol=tol, atol=tol)
    assert model.vision_encoder.patch_embed.weight.grad.abs().max() > 0
    assert model.audio_encoder.conv1.weight.grad.abs().max() > 0
