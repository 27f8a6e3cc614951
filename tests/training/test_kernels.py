"""``train.cross_entropy``, ``train.fusion`` and ``train.encoder_attention``: each choice's training
step equals the step of megatron-core's loss, no fusion and the packed (varlen) attention (the
same math in another order: equal within float32 noise), and a bad value is one line."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from megaomni.config import ConfigError, load_config
from megaomni.models import build as models_build
from megaomni.models import llm as models_llm
from megaomni.ops import attention, kernels
from megaomni.validation import check_model
from tests.conftest import read_metrics, run_pretrain
from tests.models.test_parts import small_config
from tests.training import steps


@pytest.mark.parametrize("overrides, message", [
    (("train.fusion=fused",), "train.fusion='fused': valid: auto, compile, layers, none"),
    (("train.encoder_attention=flash",), "train.encoder_attention='flash': valid: auto, dense, varlen"),
    (("train.cross_entropy=chunked", "parallel.tp=2", "model.llm.num_query_groups=2"),
     "train.cross_entropy=chunked at parallel.tp=2: this loss needs the whole vocabulary on one rank"),
])
def test_bad_kernel_settings_fail_with_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        check_model(load_config(None, list(overrides)))
    assert message in str(err.value) and "\n" not in str(err.value)


def _step(tie: bool = False, audio: bool = True, **train):
    cfg = small_config()
    cfg.train.iters, cfg.train.warmup_iters = 2, 0
    cfg.model.llm.tie_embeddings = tie
    cfg.model.audio.enabled = audio
    defaults = dict(cross_entropy="megatron", fusion="none", encoder_attention="varlen")
    for name, value in {**defaults, **train}.items():
        setattr(cfg.train, name, value)
    state = steps.training_state(cfg)
    batches = [steps.micro_batch(cfg, 1, ("vision", "audio") if audio else ("vision",)),
               steps.micro_batch(cfg, 2, ("vision",))]
    return steps.step(cfg, state, batches)


# Each choice, and the function it must route through (counted: the step must take that path).
@pytest.mark.parametrize("train, module, name", [
    (dict(cross_entropy="chunked"), models_llm, "chunked_cross_entropy"),
    (dict(cross_entropy="chunked", tie=True), models_llm, "chunked_cross_entropy"),
    (dict(cross_entropy="torch"), models_llm, "full_cross_entropy"),
    (dict(encoder_attention="dense"), attention, "segment_attention"),
    # Every transformer layer compiled (and the elementwise chains inside them): ~30 s of dynamo;
    # the LLM's and the vision encoder's layers (the audio encoder's are of the vision kind).
    pytest.param(dict(fusion="layers", audio=False), models_build, "compile_layers", marks=pytest.mark.slow),
], ids=["chunked_loss", "chunked_loss_tied", "torch_loss", "dense_encoder_attention", "fusion_layers"])
def test_a_step_with_each_kernel_choice_equals_the_reference(megatron_cpu, monkeypatch, train, module, name):
    """(The compiled layers take the aot_eager backend here: dynamo's capture and AOT autograd, as
    on a GPU, without inductor's C++ build of each graph.)"""
    monkeypatch.setattr(kernels, "LAYER_BACKEND", "aot_eager")
    tie, audio = train.pop("tie", False), train.pop("audio", True)
    calls, original = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or original(*a, **k))
    counters.clear()
    loss, norm, grads = _step(tie, audio, **train)
    assert calls, f"{train} did not reach {name}"
    if train.get("fusion") == "layers":  # the layers ran compiled, not quietly eager (on the CPU the
        # attention's block-mask fallback reads lengths on the host: graph breaks the GPU has not)
        assert counters["aot_autograd"]["total"] >= 3, dict(counters)
    monkeypatch.setattr(module, name, original)
    ref_loss, ref_norm, ref_grads = _step(tie, audio)
    assert loss == pytest.approx(ref_loss, rel=1e-6) and norm == pytest.approx(ref_norm, rel=1e-5)
    for name, grad in grads.items():
        assert grad.abs().max() > 0 or ref_grads[name].abs().max() == 0, name
        assert (grad - ref_grads[name]).abs().max() <= 1e-5 * ref_grads[name].abs().max() + 1e-8, name


def test_rows_padded_alone_train_as_rows_padded_to_the_longest(toy_data, tmp_path):
    """``data.row_padding=row`` leaves out padding, never a token: the same losses and grad norms as
    every row padded to the step's longest (float32 sums in another order), with less padding."""
    runs = {}
    for padding in ("row", "step"):
        proc = run_pretrain(f"data.path={toy_data}", f"train.output_dir={tmp_path / padding}", "train.iters=3",
                            "train.warmup_iters=1", "data.seq_length=64", "data.max_tokens=80",
                            f"data.row_padding={padding}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[padding] = read_metrics(str(tmp_path / padding))
    for alone, longest in zip(runs["row"], runs["step"]):
        assert alone["loss"] == pytest.approx(longest["loss"], rel=1e-6)
        assert alone["grad_norm"] == pytest.approx(longest["grad_norm"], rel=1e-5)
        assert alone["tokens"] == longest["tokens"] and alone["padding"] < longest["padding"]


@pytest.mark.parametrize("gpu, overrides, loss, whole_layers", [
    (False, (), "megatron", set()),  # the CPU: megatron-core's loss, nothing compiled
    (True, (), "torch", {"llm", "encoders"}),  # one GPU rank, dense LLM: torch's loss, whole layers
    (True, ("parallel.tp=2", "model.llm.num_query_groups=2"), "megatron", set()),  # vocab-parallel loss; collectives
    (True, ("parallel.cp=2",), "torch", set()),  # collectives inside the layers
    (True, ("model.llm.moe.num_experts=4",), "torch", {"encoders"}),  # the dispatcher's host reads
    (True, ("train.fusion=layers", "train.cross_entropy=chunked", "parallel.cp=2"), "chunked", {"llm", "encoders"}),
])
def test_auto_picks_the_measured_kernels(monkeypatch, gpu, overrides, loss, whole_layers):
    monkeypatch.setattr(kernels, "pick_device", lambda _: torch.device("cuda" if gpu else "cpu"))
    chosen = kernels.kernels(load_config(None, list(overrides)))
    assert (chosen.loss, chosen.whole_layers, chosen.fusion) == (loss, whole_layers, gpu)


@pytest.mark.parametrize("activation, kept", [("quick_gelu", set()), ("gelu", {"mlp.linear_fc1"})])
def test_whole_layers_fold_biases_their_callers_add_plainly(megatron_cpu, activation, kept):
    """compile_layers puts each bias into its GEMM (ops.linear ``fold_bias``), but for the MLP's
    first linear where megatron-core's fused bias-GELU kernel takes the bias itself."""
    from megatron.core.transformer.spec_utils import build_module

    from megaomni.layers.specs import encoder_layer_spec
    from megaomni.layers.transformer_config import make_transformer_config
    from megaomni.ops.linear import PlainLinear

    config = make_transformer_config(num_layers=1, hidden_size=8, num_attention_heads=2, ffn_hidden_size=16,
                                     norm_eps=1e-6, norm="layernorm", activation=activation, bias=True, fusion=True)
    layer = build_module(encoder_layer_spec("layernorm"), config=config, layer_number=1)
    kernels.fold_biases(layer)
    linears = {n: m for n, m in layer.named_modules() if isinstance(m, PlainLinear)}
    assert set(linears) == {"self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1",
                            "mlp.linear_fc2"}
    assert {n for n, m in linears.items() if not m.fold_bias} == kept
    x = torch.randn(5, 1, 8)
    out, bias = linears["mlp.linear_fc2"](torch.randn(5, 1, 16))
    assert bias is None and linears["mlp.linear_fc1"](x)[1] is (linears["mlp.linear_fc1"].bias if kept else None)
