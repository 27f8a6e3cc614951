"""The layouts the parity tests run, and how a layout's run is started and compared.

Every run starts from the same initial weights (a weights-only checkpoint written once per model
by a single process with ``train.iters=0``; loading reshards it to the layout), so any
difference in loss or grad norm is the layout's doing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from tests.conftest import read_metrics, run_pretrain
from tests.parallel.layout_checks import Layout, assert_layout_took_effect
from tests.parallel.probe import read_probes

# pretrain_omni.py with the probe (tests/parallel/probe.py): what each rank held, encoded and clipped by.
PROBED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probed_pretrain.py")


@dataclass(frozen=True)
class Model:
    name: str
    overrides: tuple[str, ...]


# 8 LLM layers so PP4 x VPP2 has a layer per virtual stage; 16 samples (~31 tokens each) packed
# into rows of 128 tokens make >= 4 micro-batches a step, enough for the interleaved schedule.
# No checkpoint at the end (a run that needs one asks for it: checkpoint.save_interval or save_last).
COMMON = ("train.iters=3", "train.warmup_iters=0", "checkpoint.save_interval=0", "checkpoint.save_last=false",
          "model.llm.num_layers=8",
          "data.global_batch_size=16", "data.seq_length=64", "data.max_tokens=128")
# The same steps unpacked: 4 right-padded micro-batches of 4 samples.
PADDED = ("data.packing=false", "data.micro_batch_size=4")
DENSE = Model("dense", ())
# A realistic vocabulary (the toy tokenizer's ~200 words are padded up to 4096 rows): the
# vocab-parallel embedding, output layer and cross entropy at a size where fp32 summation order shows.
WIDE_VOCAB = Model("wide_vocab", ("model.llm.vocab_size=4096",))
# Every other layer MoE, with a shared expert and the aux loss: dense and expert layers mixed.
MOE = Model("moe", ("model.llm.moe.num_experts=4", "model.llm.moe.top_k=2", "model.llm.moe.layer_freq=2",
                    "model.llm.moe.shared_expert_ffn_hidden_size=64",
                    # EP over 2 data-parallel ranks needs an even micro-batch count; every MoE run
                    # keeps it, so all layouts train on the same micro-batches.
                    "data.micro_batch_multiple=2"))
# The options imported families bring (Qwen2-VL's): multimodal RoPE, LayerNorm blocks with
# biases and an ungated MLP in the encoders, a wide projector.
IMPORTED = Model("imported", ("model.llm.mrope_section=[2,3,3]", "model.llm.qkv_bias=true",
                              "model.vision.norm=layernorm", "model.vision.activation=quick_gelu",
                              "model.vision.bias=true", "model.vision.temporal_embedding=false",
                              "model.vision.projector_hidden_size=256", "model.audio.norm=layernorm",
                              "model.audio.activation=gelu", "model.audio.bias=true"))
# (name, ranks, overrides, models it applies to). An MoE LLM under TP needs sequence parallelism.
LAYOUTS = [
    ("tp2", 2, ("parallel.tp=2",), (DENSE,)),
    ("tp2_sp", 2, ("parallel.tp=2", "parallel.sp=true"), (WIDE_VOCAB, MOE)),
    ("tp2_enc_tp2", 2, ("parallel.tp=2", "parallel.encoder.tp=2"), (DENSE, IMPORTED)),
    ("pp2", 2, ("parallel.pp=2",), (DENSE, MOE)),
    ("pp2_vpp2", 2, ("parallel.pp=2", "parallel.vpp=2"), (DENSE, MOE)),
    # MoE under the interleaved schedule: pp2_vpp2 (CI time).
    ("pp4_vpp2", 4, ("parallel.pp=4", "parallel.vpp=2"), (DENSE,)),
    ("cp2", 2, ("parallel.cp=2",), (WIDE_VOCAB, MOE, IMPORTED)),
    ("ep2", 2, ("parallel.ep=2",), (MOE,)),
    # The experts' GEMMs: the loop everywhere else (auto, with 4 experts), torch._grouped_mm here.
    ("ep2_grouped", 2, ("parallel.ep=2", "model.llm.moe.grouped_gemm=torch"), (MOE,)),
    ("dp2_distopt", 2, ("parallel.distributed_optimizer=true",), (DENSE, MOE)),
    ("tp2_pp2", 4, ("parallel.tp=2", "parallel.pp=2"), (DENSE,)),
    ("pp2_ep2", 4, ("parallel.pp=2", "parallel.ep=2"), (MOE,)),
    # Expert TP follows parallel.tp: the dispatcher gathers uneven token counts over it.
    ("tp2_sp_ep2", 4, ("parallel.tp=2", "parallel.sp=true", "parallel.ep=2"), (MOE,)),
    # MoE under TP x SP x PP: here with EP too (CI time).
    ("tp2_sp_pp2_ep2", 8, ("parallel.tp=2", "parallel.sp=true", "parallel.pp=2", "parallel.ep=2"), (MOE,)),
]

CASES = [pytest.param(model, nproc, overrides, id=f"{model.name}-{name}")
         for name, nproc, overrides, models in LAYOUTS for model in models]


# What a layout may differ from one process by (relative), fp32 on the CPU: the same sums in
# another order (TP / CP / PP partial sums reduced over ranks, a vocab-parallel softmax, EP's
# dispatch), nothing more. Measured, the largest over 3 iterations of WIDE_VOCAB tp2_sp / cp2 /
# joint pp2, MoE tp2_sp_ep2 / cp2 / pp2_ep2, dense tp2 / pp4_vpp2 / dp2_distopt / tp2_enc_tp2:
# loss and answer NLL 5.2e-8 (MoE tp2_sp_ep2); the grad norm, float64 sums of the same fp32
# gradients, 9.7e-7 (WIDE_VOCAB tp2_sp, iteration 3: two optimizer steps amplify the gradients'
# last-bit differences; 4e-9 at iteration 1). A factor ~5-10 above.
REL = 5e-7
NORM_REL = 5e-6
# megatron-core's own grad norm (its CPU fallback sums the squares in fp32) against the float64 one:
# measured up to 7.3e-5 with WIDE_VOCAB (4096 x 64 output layer), so it is no parity measure there.
NORM_FP32 = 5e-4


def launch(out, *overrides: str, nproc: int = 1, **kwargs) -> None:
    proc = run_pretrain(f"train.output_dir={out}", *overrides, nproc=nproc, **kwargs)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def train(out, *overrides: str, nproc: int = 1, **kwargs) -> list[dict]:
    launch(out, *overrides, nproc=nproc, **kwargs)
    return read_metrics(str(out))


def max_relative_difference(reference: list[dict], records: list[dict]) -> dict[str, float]:
    return {key: max(abs(b[key] - a[key]) / abs(a[key]) for a, b in zip(reference, records))
            for key in ("loss", "grad_norm")}


def assert_same_run(reference: list[dict], records: list[dict], rel: float,
                    keys: tuple[str, ...] = ("loss", "grad_norm", "answer_nll")) -> None:
    """Same iterations, token counts, and ``keys`` (loss, grad norm, answer NLL) within ``rel`` (relative)."""
    assert [r["iteration"] for r in records] == [r["iteration"] for r in reference]
    for a, b in zip(reference, records):
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=rel), (key, a, b)
        assert (b["tokens"], b["loss_tokens"]) == (a["tokens"], a["loss_tokens"])


class ParitySetup:
    """``extra`` overrides apply to every run (the initial weights' too), e.g. ``train.bf16=true``;
    ``launcher`` keyword arguments go to every launch (``script``: an entry point other than
    pretrain_omni.py)."""

    def __init__(self, toy_data: str, root, extra: tuple[str, ...] = (), **launcher):
        self.toy_data, self.root, self.extra, self.launcher = toy_data, root, extra, {"script": PROBED, **launcher}
        self._references: dict[str, list[dict]] = {}

    def init_weights(self, model: Model) -> str:
        """A weights-only checkpoint of ``model``'s initial weights (single process)."""
        path = self.root / f"{model.name}_init"
        if not path.exists():
            launch(self.root / f"{model.name}_init_run", f"data.path={self.toy_data}", *COMMON, *self.extra,
                   *model.overrides, "train.iters=0", f"checkpoint.save={path}", **self.launcher)
        return str(path / "iter_0000000")

    def run(self, model: Model, out, *overrides: str, nproc: int = 1) -> list[dict]:
        """A ``model`` run from the shared initial weights; ``overrides`` win over COMMON."""
        return train(out, f"data.path={self.toy_data}", *COMMON, *self.extra, *model.overrides,
                     f"checkpoint.load={self.init_weights(model)}", *overrides, nproc=nproc, **self.launcher)

    def reference(self, model: Model) -> list[dict]:
        if model.name not in self._references:
            self._references[model.name] = self.run(model, self._reference_dir(model))
        return self._references[model.name]

    def _reference_dir(self, model: Model):
        return self.root / f"{model.name}_reference"

    def check_layout(self, model: Model, out, overrides: tuple[str, ...], nproc: int, rel: float = REL,
                     norm_rel: float = NORM_REL) -> list[dict]:
        """A ``model`` run under the layout ``overrides`` asks for, against the one-process reference:
        the layout took effect on every rank (layout_checks.py); same iterations and token counts;
        loss and answer NLL within ``rel``; the grad norm, summed in float64 on both sides, within
        ``norm_rel`` (megatron-core's own, summed in fp32, only within NORM_FP32 of it)."""
        reference, records = self.reference(model), self.run(model, out, *overrides, nproc=nproc)
        assert_same_run(reference, records, rel, keys=("loss", "answer_nll"))
        reference_probes, probes = read_probes(self._reference_dir(model)), read_probes(out)
        assert_layout_took_effect(reference_probes, probes, Layout.requested(overrides, nproc))
        for run, run_probes in ((reference, reference_probes), (records, probes)):
            for record in run:
                norm64 = run_probes[0]["grad_norm64"][str(record["iteration"])]
                assert record["grad_norm"] == pytest.approx(norm64, rel=NORM_FP32), (record, norm64)
        for record in reference:
            iteration = str(record["iteration"])
            norm64 = reference_probes[0]["grad_norm64"][iteration]
            for rank, probe in enumerate(probes):
                assert probe["grad_norm64"][iteration] == pytest.approx(norm64, rel=norm_rel), (rank, record)
        return records
