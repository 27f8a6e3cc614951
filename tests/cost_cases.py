"""Steps of given sizes for tests/test_cost_model.py, through the code's own types."""

from __future__ import annotations

import torch

from megaomni.config import OmniConfig
from megaomni.data.balance import CostModel
from megaomni.data.sample import Sample
from megaomni.data.step_plan import StepPlan, plan_step
from megaomni.models.media_layout import audio_tokens, vision_tokens
from megaomni.pipeline.costs import FlopModel
from megaomni.pipeline.shares import Item
from megaomni.validation import min_micro_batches


def make_samples(sizes: list[dict], cfg: OmniConfig) -> list[Sample]:
    """Samples of ``tokens`` tokens, images of patch ``grids`` and clips of ``frames`` frames."""
    samples = []
    for i, s in enumerate(sizes):
        n = s["tokens"]
        samples.append(Sample(key=str(i), tokens=torch.zeros(n, dtype=torch.long), labels=torch.zeros(n, dtype=torch.long),
                              loss_mask=torch.ones(n), images=[(torch.zeros(h * w, 1), (h, w)) for h, w in s["grids"]],
                              audios=[torch.zeros(f, 1) for f in s["frames"]]))
    return samples


def plan_dp_step(samples: list[Sample], cfg: OmniConfig, dp: int) -> StepPlan:
    return plan_step(samples, cfg.data, CostModel.from_config(cfg), dp, min_micro_batches(cfg), 8)


def item_list(sizes: list[dict], cfg: OmniConfig) -> list[Item]:
    """A micro-batch's media items: its images in order, then its clips."""
    merge, down = cfg.model.vision.merge_size, cfg.model.audio.downsample
    grids = [g for s in sizes for g in s["grids"]]
    frames = [f for s in sizes for f in s["frames"]]
    return ([Item("vision", i, h * w, vision_tokens(h, w, merge)) for i, (h, w) in enumerate(grids)]
            + [Item("audio", i, f, audio_tokens(f, down)) for i, f in enumerate(frames)])


def pipeline_flops(cfg: OmniConfig, stages: list[int], vocab: int) -> FlopModel:
    return FlopModel.from_config(cfg, stages, vocab)
