"""A packed row (several samples back to back, then padding) gives every sample the same
per-token losses and gradients as running that sample alone: attention, positions and media
stay inside each sample. Text-only, image, video, audio and mixed samples, float64."""

from __future__ import annotations

import torch

from megaomni.data.collate import collate, collate_packed
from megaomni.data.sample import Sample
from megaomni.media.audio import audio_tokens
from megaomni.media.vision import vision_tokens
from tests.media_views import batch_image_times, run_model, sample_media
from tests.models.test_parts import AUDIO_PAD, IMAGE_PAD, VOCAB, assert_close_ref, built, random_frames, random_patches  # noqa: F401


def _sample(cfg, seed: int, text: int, grids=(), clips=(), times=()) -> Sample:
    """``text`` random tokens, then each image's and clip's placeholder run, then 3 more tokens.
    ``times``: the images' frame indices (a video's frames are images with t = 0..T-1)."""
    gen = torch.Generator().manual_seed(seed)
    merge, down = cfg.model.vision.merge_size, cfg.model.audio.downsample
    parts = [torch.randint(10, VOCAB, (text,), generator=gen)]
    parts += [torch.full((vision_tokens(h, w, merge),), IMAGE_PAD) for h, w in grids]
    parts += [torch.full((audio_tokens(n, down),), AUDIO_PAD) for n in clips]
    parts.append(torch.randint(10, VOCAB, (3,), generator=gen))
    tokens = torch.cat(parts)
    images = [(random_patches(cfg, [g], seed=seed + 10 + i), tuple(g)) for i, g in enumerate(grids)]
    audios = [random_frames(cfg, [n], seed=seed + 20 + i) for i, n in enumerate(clips)]
    return Sample(key=f"s{seed}", tokens=tokens, labels=torch.randint(0, VOCAB, tokens.shape, generator=gen),
                  loss_mask=torch.rand(tokens.shape, generator=gen, dtype=torch.float64).round().float(),
                  media=sample_media(images, audios, times, merge, down))


def test_packed_row_equals_samples_alone(built):  # noqa: F811
    cfg, model = built
    samples = [
        _sample(cfg, 1, text=7),  # text only
        _sample(cfg, 2, text=4, grids=[(2, 4)]),  # image
        _sample(cfg, 3, text=2, clips=[9]),  # audio
        _sample(cfg, 4, text=5, grids=[(4, 4), (2, 2)], clips=[6]),  # mixed
        _sample(cfg, 7, text=3, grids=[(2, 2)] * 3 + [(2, 4)], times=[0, 1, 2, 0]),  # a video, then an image
    ]
    lengths = [s.tokens.numel() for s in samples]
    packed = collate_packed(samples, pad_id=0, length=sum(lengths) + 5)
    assert batch_image_times(packed).tolist() == [0, 0, 0, 0, 1, 2, 0]  # still images 0; the video's frames 0..2
    weights = torch.rand(packed.labels.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    weights[:, sum(lengths):] = 0  # the padding segment's losses are never trained
    params = dict(model.named_parameters())

    model.zero_grad(set_to_none=True)
    loss = run_model(model, packed)
    (loss * weights).sum().backward()
    packed_grads = {n: p.grad.clone() for n, p in params.items() if p.grad is not None}

    model.zero_grad(set_to_none=True)
    start = 0
    for sample, n in zip(samples, lengths):
        alone = run_model(model, collate([sample], pad_id=0, length=n))
        assert_close_ref(loss[:, start:start + n], alone.detach(), what=f"loss of {sample.key}")
        (alone * weights[:, start:start + n]).sum().backward()  # gradients accumulate over samples
        start += n
    for name, grad in packed_grads.items():
        assert_close_ref(grad, params[name].grad, what=f"grad {name}")
    assert packed_grads["vision_encoder.patch_embed.weight"].abs().max() > 0
    assert packed_grads["audio_encoder.conv1.weight"].abs().max() > 0
    model.zero_grad(set_to_none=True)


def test_packing_changes_nothing_only_because_boundaries_hold(built):  # noqa: F811
    """The control: without ``cu_seqlens`` the same row lets samples see each other, and the
    later samples' losses change."""
    cfg, model = built
    samples = [_sample(cfg, 5, text=6), _sample(cfg, 6, text=4, grids=[(2, 4)])]
    packed = collate_packed(samples, pad_id=0, length=sum(s.tokens.numel() for s in samples))
    first = samples[0].tokens.numel()
    with torch.no_grad():
        bounded = run_model(model, packed)
        packed.cu_seqlens = None
        leaking = run_model(model, packed)
    assert torch.equal(bounded[:, :first], leaking[:, :first])  # causal: the first sample sees only itself
    assert not torch.allclose(bounded[:, first:], leaking[:, first:])
