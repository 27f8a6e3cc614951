"""Training steps in process, as the trainer takes them: hand-made micro-batches of the tiny model
of ``tests/models/test_parts.py`` (text, images, a clip), one step of megatron-core's DDP,
optimizer and schedules on one gloo rank (the ``megatron_cpu`` fixture)."""

from __future__ import annotations

import torch

from megaomni.config import OmniConfig
from megaomni.data.batch import Batch
from tests.media_views import audio_batch, vision_batch
from tests.models.test_parts import AUDIO_PAD, IMAGE_PAD, VOCAB, random_frames, random_patches, small_config

PAD_IDS = {"vision": IMAGE_PAD, "audio": AUDIO_PAD}
CPU = torch.device("cpu")


def training_state(cfg: OmniConfig, seed: int = 0):
    """megatron-core's DDP, optimizer and LR schedule over the model of ``cfg``, its initial
    weights drawn from ``seed`` (``train.seed``: they follow it alone)."""
    from megaomni.training.setup import build_training_state

    cfg.train.seed = seed
    return build_training_state(cfg, VOCAB, PAD_IDS.__getitem__, CPU)


def small_state(*freeze: str, seed: int = 0, moe=None):
    """The tiny model's config and training state with ``freeze``; weight decay on, and gradient
    clipping that acts (the grad norm matters). ``moe``: a ``model.llm.moe`` for an MoE LLM."""
    cfg = small_config()
    cfg.model.freeze = list(freeze)
    if moe is not None:
        cfg.model.llm.moe = moe
    cfg.train.iters, cfg.train.warmup_iters, cfg.train.lr, cfg.train.min_lr = 4, 0, 1e-2, 1e-3
    cfg.train.weight_decay, cfg.train.clip_grad = 0.1, 0.05
    # Adam's first step is lr * g / (|g| + eps): with eps near float noise in a gradient (1e-8) an
    # element with |g| ~ eps moves by a fraction of lr on that noise alone; eps=1e-4 keeps the
    # update smooth in g, so the same gradients give the same weights within a stated tolerance.
    cfg.train.adam_eps = 1e-4
    return cfg, training_state(cfg, seed)


def media(cfg: OmniConfig, seed: int, modalities=("vision", "audio")) -> dict:
    media = {"vision": vision_batch(random_patches(cfg, [(4, 4), (2, 4)], seed).float(), [(4, 4), (2, 4)]),
             "audio": audio_batch(random_frames(cfg, [16], seed).float(), [16])}
    return {name: media[name] for name in modalities}


def micro_batch(cfg: OmniConfig, seed: int, modalities=("vision", "audio")) -> Batch:
    """One padded sample: text, each modality's placeholders, text; the loss on the text."""
    inputs = media(cfg, seed, modalities)
    gen = torch.Generator().manual_seed(seed)
    pieces = []
    for name in modalities:
        pieces += [torch.randint(7, VOCAB, (3,), generator=gen), torch.full((sum(inputs[name].tokens),), PAD_IDS[name])]
    tokens = torch.cat([*pieces, torch.randint(7, VOCAB, (8,), generator=gen)])[None]
    labels = torch.randint(7, VOCAB, tokens.shape, generator=gen)
    return Batch(tokens, labels, (tokens >= 7).float(), torch.arange(tokens.shape[1])[None], inputs, num_samples=1)


def params(state) -> dict[str, torch.Tensor]:
    return dict(state.chunks[0].named_parameters())


def step(cfg: OmniConfig, state, batches: list[Batch], discard: set[str] = frozenset()):
    """One training step as the trainer takes it; the gradients of the parameters named in
    ``discard`` are zeroed before the optimizer steps. Returns the loss, the grad norm and the
    gradients the optimizer stepped on."""
    from megaomni.training.schedule import StepRunner
    from megaomni.training.step import make_forward_step

    for ddp in state.ddp:
        ddp.zero_grad_buffer()
    state.optimizer.zero_grad()
    reports = StepRunner(cfg, state, CPU, VOCAB).run(1, batches, make_forward_step(CPU))
    named = params(state)
    for name in discard:
        named[name].main_grad.zero_()
    grads = {n: p.main_grad.clone() for n, p in named.items() if p.requires_grad}
    _, grad_norm, _ = state.optimizer.step()
    state.scheduler.step(increment=1)
    stats = sum(r["stats"] for r in reports)
    return float(stats[0] / stats[1]), float(grad_norm), grads


def copy_weights(source, target) -> None:
    target.chunks[0].load_state_dict(source.chunks[0].state_dict())
    target.optimizer.reload_model_params()
