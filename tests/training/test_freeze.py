"""``model.freeze``: the names and their validation, a frozen part's parameters and activations,
a step that trains only the rest (against the same step unfrozen with the frozen part's
gradients discarded), checkpoints, and PP2 under the joint schedule against one process.

In process: one gloo rank with megatron-core's DDP, optimizer and schedules, the tiny model of
``tests/models/test_parts.py`` and hand-made micro-batches. The PP2 runs are ``pretrain_omni.py``
runs through ``tests/parallel``'s harness (``slow``).
"""

from __future__ import annotations

import logging

import pytest
import torch

from megaomni.config import ConfigError, OmniConfig, load_config
from megaomni.validation import check_model
from tests.conftest import saved_tensors
from tests.media_views import vision_batch
from tests.models.test_parts import VOCAB, small_config
from tests.parallel.layouts import Model, ParitySetup, assert_same_run
from tests.training import steps
from tests.training.steps import PAD_IDS

ALL_NAMES = ("llm, llm.embedding, llm.decoder, llm.output, vision, vision.encoder, vision.projector, "
             "audio, audio.encoder, audio.projector")


# ----------------------------------------------------------------------------- names, validation


def _checked(*overrides: str) -> None:
    check_model(load_config(None, overrides))


@pytest.mark.parametrize("overrides, message", [
    (("model.freeze=[visoin]",), f"model.freeze=[visoin]: unknown part 'visoin' (valid: {ALL_NAMES})"),
    # A disabled modality has no names.
    (("model.audio.enabled=false", "model.freeze=[audio]"),
     ("model.freeze=[audio]: unknown part 'audio' (valid: llm, llm.embedding, llm.decoder, llm.output, vision, "
      "vision.encoder, vision.projector)")),
    (("model.freeze=[llm, vision, audio]",),
     "model.freeze=[llm, vision, audio]: freezes every part, nothing would train (leave at least one part out)"),
    (("model.freeze=[llm, vision.encoder, vision.projector, audio]",), "freezes every part"),
    (("model.llm.tie_embeddings=true", "model.freeze=[llm.embedding]"),
     ("model.freeze=[llm.embedding]: with model.llm.tie_embeddings=true the embedding and output layer share one "
      "weight: freeze both llm.embedding and llm.output, or neither")),
])
def test_bad_freeze_lists_fail_with_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        _checked(*overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_good_freeze_lists_pass():
    for freeze in ("[]", "[vision]", "[llm, vision.encoder]", "[audio.projector, llm.output, vision]"):
        _checked(f"model.freeze={freeze}")
    _checked("model.llm.tie_embeddings=true", "model.freeze=[llm.embedding, llm.output]")
    _checked("model.llm.tie_embeddings=true", "model.freeze=[llm]")
    assert load_config(None, ["model.freeze=[vision.encoder, llm]"]).model.freeze == ["vision.encoder", "llm"]
    assert OmniConfig().model.freeze == []


# ----------------------------------------------------------------------------- the model


def _build(*freeze: str):
    from megaomni.models.build import build_model
    from megaomni.models.freeze import freeze as apply_freeze

    torch.manual_seed(0)
    model = build_model(small_config(), VOCAB, PAD_IDS.__getitem__)
    apply_freeze(model, freeze)
    return model


def _modules(model, name: str) -> list[torch.nn.Module]:
    """What each name stands for, spelled out from the module tree: the reference the table of
    megaomni/models/freeze.py is checked against."""
    llm = model.llm
    parts = {"llm": [llm], "llm.embedding": [llm.embedding], "llm.decoder": [llm.decoder],
             "llm.output": [llm.output_layer]}
    for modality in ("vision", "audio"):
        encoder = getattr(model, f"{modality}_encoder")
        parts[modality] = [encoder]
        parts[f"{modality}.encoder"] = [m for n, m in encoder.named_children() if n != "projector"]
        parts[f"{modality}.projector"] = [encoder.projector]
    return parts[name]


@pytest.mark.parametrize("freeze", [("llm",), ("llm.embedding",), ("llm.decoder",), ("llm.output",), ("vision",),
                                    ("vision.encoder",), ("vision.projector",), ("audio.encoder", "llm.output")])
def test_names_freeze_their_modules(megatron_cpu, freeze):
    model = _build(*freeze)
    expected = {id(p) for name in freeze for module in _modules(model, name) for p in module.parameters()}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and frozen == {n for n, p in model.named_parameters() if id(p) in expected}


def _encode(model, media):
    """The vision encoder's output, the tensors autograd saved for backward while it ran, and
    the grad mode its transformer blocks and projector ran in."""
    encoder, modes, saved = model.vision_encoder, {}, []
    hooks = [encoder.blocks.register_forward_hook(lambda *_: modes.__setitem__("blocks", torch.is_grad_enabled())),
             encoder.projector.register_forward_pre_hook(
                 lambda *_: modes.__setitem__("projector", torch.is_grad_enabled()))]
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = encoder(media)
    for hook in hooks:
        hook.remove()
    return out, len(saved), modes


def test_frozen_encoder_keeps_no_activations(megatron_cpu):
    cfg = small_config()
    media = steps.media(cfg, 0)["vision"]
    trains = _build()
    _, everything, modes = _encode(trains, media)
    assert modes == {"blocks": True, "projector": True}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        trains.vision_encoder.projector(torch.randn(sum(media.rows), cfg.model.vision.hidden_size))
    assert everything > len(saved) > 0  # the control: the body's activations are most of them

    # The body frozen: it runs without autograd, the projector with it (only its activations kept).
    body = _build("vision.encoder")
    out, count, modes = _encode(body, media)
    assert modes == {"blocks": False, "projector": True}
    assert count == len(saved) and out.requires_grad
    # Whole: nothing kept, no graph. The caller's grad mode is back afterwards, also after a failure.
    out, count, modes = _encode(_build("vision"), media)
    assert modes == {"blocks": False, "projector": False}
    assert count == 0 and not out.requires_grad and torch.is_grad_enabled()
    with pytest.raises(RuntimeError):
        body.vision_encoder(vision_batch(torch.zeros(4, 5), [(2, 2)]))  # patches of the wrong width
    assert torch.is_grad_enabled()
    # Under the caller's no_grad the projector runs without grad too; on its own, as if unfrozen.
    with torch.no_grad():
        _, count, modes = _encode(body, media)
    assert count == 0 and modes == {"blocks": False, "projector": False}
    assert body.vision_encoder.projector(torch.randn(16, cfg.model.vision.hidden_size)).requires_grad


# ----------------------------------------------------------------------------- training steps


@pytest.mark.parametrize("freeze", [("vision.encoder", "llm.embedding"), ("vision", "audio.projector", "llm.decoder")])
def test_a_step_trains_only_the_rest(megatron_cpu, freeze):
    """Against the same step unfrozen with the frozen part's gradients discarded: the same loss,
    grad norm (clipping acts), gradients and updated weights of what trains. Frozen weights stay
    bit-identical, where weight decay moves the reference's."""
    cfg, state = steps.small_state(*freeze)
    _, reference = steps.small_state()
    steps.copy_weights(state, reference)
    params = steps.params(state)
    frozen = {n for n, p in params.items() if not p.requires_grad}
    # Outside DDP's grad buffers (so outside its all-reduce) and the optimizer: no state.
    trained = {id(p) for n, p in params.items() if n not in frozen}
    assert {id(p) for ddp in state.ddp for b in ddp.buffers + ddp.expert_parallel_buffers for p in b.params} == trained
    assert {id(p) for group in state.optimizer.param_groups for p in group["params"]} == trained
    initial = {n: p.detach().clone() for n, p in params.items()}

    batches = [steps.micro_batch(cfg, 1), steps.micro_batch(cfg, 2, ("vision",)),
               steps.micro_batch(cfg, 3, ("audio",))]
    loss, norm, grads = steps.step(cfg, state, batches)
    ref_loss, ref_norm, ref_grads = steps.step(cfg, reference, batches, discard=frozen)
    assert loss == pytest.approx(ref_loss, rel=1e-6) and norm == pytest.approx(ref_norm, rel=1e-6)
    assert norm > cfg.train.clip_grad
    assert grads.keys() == set(params) - frozen
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-5, atol=1e-8, msg=name)
    after, ref_after = steps.params(state), steps.params(reference)
    for name in params:
        if name in frozen:
            assert torch.equal(after[name], initial[name]), name
            assert after[name].grad is None and not hasattr(after[name], "main_grad"), name
        else:
            # Within 1e-4 of the step's size (lr); see _state for Adam's eps.
            torch.testing.assert_close(after[name], ref_after[name], rtol=1e-6, atol=1e-4 * cfg.train.lr,
                                       msg=lambda m, n=name: f"{n}: {m}")
    assert any(not torch.equal(ref_after[n], initial[n]) for n in frozen)  # the control


def test_a_micro_batch_that_reaches_nothing_trained(megatron_cpu):
    """Only the vision projector trains (LLaVA's first stage, audio frozen as well): micro-batches
    without images (audio alone, text alone) reach no trained parameter, and the step still runs
    (megatron-core skips the backward of an output that needs none); only the projector moves."""
    cfg, state = steps.small_state("llm", "audio", "vision.encoder")
    initial = {n: p.detach().clone() for n, p in steps.params(state).items()}
    steps.step(cfg, state, [steps.micro_batch(cfg, 1, ("audio",)), steps.micro_batch(cfg, 2),
                            steps.micro_batch(cfg, 3, ())])
    moved = {n for n, p in steps.params(state).items() if not torch.equal(p, initial[n])}
    assert moved == {n for n in initial if n.startswith("vision_encoder.projector.")}


def test_the_start_log_counts_trained_and_frozen(megatron_cpu, caplog):
    with caplog.at_level(logging.INFO, logger="megaomni.train"):
        _, state = steps.small_state("vision")
    model = state.chunks[0]
    frozen = sum(p.numel() for p in model.vision_encoder.parameters())
    trained = sum(p.numel() for p in model.parameters()) - frozen
    assert f"{trained / 1e6:.2f}M train, {frozen / 1e6:.2f}M frozen" in caplog.text


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoints_hold_frozen_weights_and_resume(megatron_cpu, tmp_path):
    from megaomni.checkpoint.check import load_common
    from megaomni.checkpoint.dist_ckpt import (
        load_checkpoint,
        load_weights,
        save_checkpoint,
    )
    from megaomni.validation import check_resumed_freeze

    cfg, state = steps.small_state("vision")
    initial = {n: p.detach().clone() for n, p in steps.params(state).items()}
    steps.step(cfg, state, [steps.micro_batch(cfg, 1)])
    save_checkpoint(str(tmp_path), 1, state.chunks, state.optimizer, state.scheduler, common={"config": cfg.to_dict()})
    saved = {n: p.detach().clone() for n, p in steps.params(state).items()}
    vision = [n for n in saved if n.startswith("vision_encoder.")]
    assert all(torch.equal(saved[n], initial[n]) for n in vision)

    # Into an unfrozen model (other initial weights): the frozen weights as they were, the rest trained.
    _, unfrozen = steps.small_state(seed=1)
    assert not all(torch.equal(steps.params(unfrozen)[n], saved[n]) for n in vision)
    load_weights(str(tmp_path), unfrozen.chunks)
    for name, value in steps.params(unfrozen).items():
        assert torch.equal(value, saved[name]), name

    # Resumed with the same freeze list: the next step is the uninterrupted run's.
    _, resumed = steps.small_state("vision", seed=2)
    load_checkpoint(str(tmp_path), resumed.chunks, resumed.optimizer, resumed.scheduler)
    batches = [steps.micro_batch(cfg, 2), steps.micro_batch(cfg, 3)]
    assert steps.step(cfg, resumed, batches)[:2] == steps.step(cfg, state, batches)[:2]
    for name, value in steps.params(resumed).items():
        assert torch.equal(value, steps.params(state)[name]), name

    # A full checkpoint resumes with the freeze list it was saved with (the same parts, however named).
    cfg.checkpoint.load, common = str(tmp_path), load_common(str(tmp_path / "iter_0000001"))
    cfg.model.freeze = ["vision.projector", "vision.encoder"]
    check_resumed_freeze(cfg, common)
    cfg.model.freeze = []
    with pytest.raises(ConfigError, match=r"saved with model.freeze=\[vision\], loaded with \[\]: a checkpoint "
                                          "resumes with the freeze list it was saved with"):
        check_resumed_freeze(cfg, common)

    # A next stage (checkpoint.finetune) under another list: the weights, at iteration 0, a new optimizer.
    cfg.checkpoint.finetune = True
    check_resumed_freeze(cfg, common)
    _, stage2 = steps.small_state(seed=3)
    assert load_checkpoint(str(tmp_path), stage2.chunks, stage2.optimizer, stage2.scheduler, finetune=True) == \
        {"iteration": 0}
    for name, value in steps.params(stage2).items():
        assert torch.equal(value, saved[name]), name
    assert not stage2.optimizer.state_dict()["state"]


# ----------------------------------------------------------------------------- PP2, the joint schedule

# tests/parallel's runs, smaller: 2 LLM layers (one per stage), 2 iterations (the second shows the
# first step's update).
FROZEN_VISION = Model("frozen_vision", ("model.freeze=[vision]", "model.llm.num_layers=2", "train.iters=2"))
# Every pipeline rank encodes a share of each micro-batch: never the baseline's placement.
JOINT = ("pipeline.schedule=joint", "pipeline.joint_fallback=false")


@pytest.fixture(scope="module")
def parity(toy_data, tmp_path_factory) -> ParitySetup:
    return ParitySetup(toy_data, tmp_path_factory.mktemp("freeze_parity"))


@pytest.mark.slow
# The joint schedule, whose executor skips a frozen encoder's backward (under megatron-core's
# schedules frozen parameters are megatron-core's own case: no gradient buffer, no optimizer state).
@pytest.mark.parametrize("schedule", [JOINT], ids=["joint"])
def test_pp2_with_a_frozen_encoder_matches_one_process(parity, schedule, tmp_path):
    records = parity.run(FROZEN_VISION, tmp_path / "run", "parallel.pp=2", *schedule, "checkpoint.save_last=true",
                         nproc=2)
    assert_same_run(parity.reference(FROZEN_VISION), records, rel=1e-5)
    # No gradient reached the frozen encoder on any rank: saved as it started, with no optimizer state.
    initial = saved_tensors(parity.init_weights(FROZEN_VISION), tmp_path)
    final = saved_tensors(tmp_path / "run" / "checkpoints" / "iter_0000002", tmp_path)
    vision = [k for k in initial if k.startswith("vision_encoder.")]
    assert vision and all(torch.equal(initial[k], final[k]) for k in vision)
    assert not [k for k in final if k.startswith("optimizer.") and "vision_encoder." in k]
    assert any(not torch.equal(initial[k], final[k]) for k in initial if k.startswith("audio_encoder."))
