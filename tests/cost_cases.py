"""Steps of given sizes for tests/test_cost_model.py, through the code's own types."""

from __future__ import annotations

import torch

from megaomni.config import OmniConfig
from megaomni.data.sample import Sample
from megaomni.data.step_plan import StepPlan, plan_step
from megaomni.flops import FlopModel
from megaomni.media.audio import audio_tokens
from megaomni.media.vision import vision_tokens
from megaomni.pipeline.shares import Item
from tests.media_views import sample_media


def make_samples(sizes: list[dict], cfg: OmniConfig) -> list[Sample]:
    """Samples of ``tokens`` tokens, images of patch ``grids`` and clips of ``frames`` frames."""
    merge, down = cfg.model.vision.merge_size, cfg.model.audio.downsample
    return [Sample(key=str(i), tokens=torch.zeros(s["tokens"], dtype=torch.long),
                   labels=torch.zeros(s["tokens"], dtype=torch.long), loss_mask=torch.ones(s["tokens"]),
                   media=sample_media([(torch.zeros(h * w, 1), (h, w)) for h, w in s["grids"]],
                                      [torch.zeros(f, 1) for f in s["frames"]], merge=merge, downsample=down))
            for i, s in enumerate(sizes)]


def plan_dp_step(samples: list[Sample], cfg: OmniConfig, dp: int) -> StepPlan:
    sizes = [s.sizes() for s in samples]
    return plan_step(sizes, cfg.data, FlopModel.from_config(cfg.model), dp, cfg.parallel.min_micro_batches(), 8)


def item_list(sizes: list[dict], cfg: OmniConfig) -> list[Item]:
    """A micro-batch's media items: its images in order, then its clips."""
    merge, down = cfg.model.vision.merge_size, cfg.model.audio.downsample
    grids = [g for s in sizes for g in s["grids"]]
    frames = [f for s in sizes for f in s["frames"]]
    return ([Item("vision", i, h * w, vision_tokens(h, w, merge)) for i, (h, w) in enumerate(grids)]
            + [Item("audio", i, f, audio_tokens(f, down)) for i, f in enumerate(frames)])


def pipeline_flops(cfg: OmniConfig, stages: list[int], vocab: int) -> FlopModel:
    return FlopModel.from_config(cfg.model, vocab, stages)
