"""A run's initial weights are the same under every layout: the iteration-0 checkpoint
(``train.iters=0``) of each layout, read whole (torch's DCP reader: every saved tensor at its
global shape, whichever ranks wrote its pieces), equals the single process's bit for bit (fp32,
CPU). Before the weights were drawn per global name (megaomni.models.initial_weights), a layer
or expert built on another pipeline or EP rank drew other values.

The MoE model mixes dense and expert layers (with a shared expert), so one model covers dense
and expert weights; 4 layers give PP2 x VPP2 a layer per virtual stage. Three launches cover TP
(with SP, as MoE needs; the encoders' too), PP, VPP, EP and the joint schedule (encoders built on
every rank)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from tests.parallel.layouts import COMMON, MOE, launch
from tests.parallel.test_encoder_replicas import _free_port

pytestmark = pytest.mark.slow

MODEL = (*COMMON, *MOE.overrides, "model.llm.num_layers=4", "train.iters=0")
LAYOUTS = [
    pytest.param(4, ("parallel.tp=2", "parallel.sp=true", "parallel.encoder.tp=2", "parallel.pp=2"),
                 id="tp2_sp_enc_tp2-pp2"),
    pytest.param(4, ("parallel.pp=2", "parallel.vpp=2", "parallel.ep=2"), id="pp2_vpp2-ep2"),
    pytest.param(2, ("parallel.pp=2", "pipeline.schedule=joint"), id="pp2_joint"),
]


def initial_weights(toy_data: str, root, name: str, *layout: str, nproc: int = 1) -> dict[str, torch.Tensor]:
    """The iteration-0 checkpoint of a run under ``layout``, as whole tensors by checkpoint key."""
    launch(root / f"{name}_run", f"data.path={toy_data}", *MODEL, *layout, f"checkpoint.save={root / name}",
           nproc=nproc)
    whole = root / f"{name}.pt"
    dcp_to_torch_save(root / name / "iter_0000000", whole)
    return {k: v for k, v in torch.load(whole, weights_only=False).items() if torch.is_tensor(v)}


@pytest.fixture(scope="module")
def one_process(toy_data, tmp_path_factory) -> dict[str, torch.Tensor]:
    return initial_weights(toy_data, tmp_path_factory.mktemp("init_one"), "one")


@pytest.mark.parametrize("nproc,layout", LAYOUTS)
def test_initial_weights_equal_one_process(one_process, toy_data, tmp_path, nproc, layout):
    weights = initial_weights(toy_data, tmp_path, "layout", *layout, nproc=nproc)
    assert weights.keys() == one_process.keys()
    assert any(".experts." in k for k in weights) and any("vision_encoder." in k for k in weights)
    differ = [k for k, v in one_process.items() if not torch.equal(v, weights[k])]
    assert not differ, differ


def _tied_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    from megaomni.parallel.model_chunks import build_model_chunks
    from megaomni.platform.distributed import init_distributed, shutdown
    from tests.models.test_parts import VOCAB, small_config

    cfg = small_config()
    cfg.parallel.pp, cfg.model.llm.tie_embeddings = 2, True
    init_distributed(cfg)
    torch.manual_seed(1000 + rank)  # each rank's global random state its own
    llm = build_model_chunks(cfg, VOCAB, {"vision": 5, "audio": 6}.__getitem__)[0].llm
    torch.save(llm.shared_embedding_or_output_weight().detach().clone(), os.path.join(out, f"{rank}.pt"))
    shutdown()


def test_tied_embeddings_start_equal_on_first_and_last_stage(tmp_path):
    """Under PP the last stage holds its own copy of a tied embedding (megatron-core keeps the two
    equal by summing their gradients): it is drawn from the same key as the first stage's."""
    mp.spawn(_tied_worker, args=(_free_port(), str(tmp_path)), nprocs=2)
    first, last = (torch.load(tmp_path / f"{r}.pt") for r in range(2))
    assert first.abs().sum() > 0 and torch.equal(first, last)
