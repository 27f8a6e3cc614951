"""Each model part against the plain-torch reference in tests/models/reference.py.

The megatron-core model is built by megaomni's own ``build_model`` with small random weights (norm
weights perturbed away from 1 so they matter), cast to float64, and its outputs / loss / gradients
are compared with the reference fed the same ``state_dict()`` tensors.

Tolerances: the model runs in float64, but megatron (and megaomni.layers.rotary) compute the rotary
angles (and the video frames' temporal embedding) in float32 before taking cos/sin, so a rotated
q/k entry carries a relative error of up to ~1e-6 (angle ``pos * inv_freq`` rounded to float32
precision). Everything downstream of rotary is therefore compared at ``RTOL = 1e-5`` with
``ATOL = 1e-5 * max|reference|``; so are the per-token loss and its gradients, since megatron's
cross entropy casts the logits to float32. Measured errors are <= 3e-7 of max|reference|
(encoders ~4e-8, the vision encoder with frame times 1.2e-8, loss ~5e-8, gradients <= 2.4e-7), a
margin of >= 40x. Parts with no rotary and no cross entropy (projector, attention core, merge, the
audio stem, the isolation checks) are compared at 1e-10 or exactly.
"""

from __future__ import annotations

import pytest
import torch

from megaomni.config import AudioConfig, LLMConfig, OmniConfig, VisionConfig
from tests.media_views import audio_batch, audio_features, image_patches, make_media, run_model, vision_batch
from tests.models import reference as ref

RTOL = 1e-5  # float64 model with float32 rotary angles (see module docstring)
TIGHT = 1e-10  # float64 paths without rotary

VOCAB = 64
IMAGE_PAD, AUDIO_PAD = 5, 6


def assert_close_ref(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL, what: str = ""):
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    atol = rtol * float(expected.abs().max().clamp_min(1e-30))
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def small_config() -> OmniConfig:
    cfg = OmniConfig()
    cfg.train.device = "cpu"
    cfg.model.llm = LLMConfig(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                              ffn_hidden_size=48, max_seq_len=64, norm_eps=1e-6)
    cfg.model.vision = VisionConfig(num_layers=2, hidden_size=16, num_attention_heads=2, ffn_hidden_size=24,
                                    patch_size=2, merge_size=2, in_channels=3, rotary_base=100.0)
    cfg.model.audio = AudioConfig(num_layers=2, hidden_size=16, num_attention_heads=2, ffn_hidden_size=24,
                                  n_mels=8, downsample=4, rotary_base=1000.0)
    return cfg


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights large enough that attention is far from uniform; norm weights in [0.5, 1.5]."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if "norm" in name:
                p.copy_(1.0 + (torch.rand(p.shape, generator=gen, dtype=torch.float64) - 0.5))
            elif p.dim() == 1:  # biases
                p.copy_(0.1 * noise)
            elif "word_embeddings" in name:
                p.copy_(noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)


@pytest.fixture(scope="module")
def built(megatron_cpu):
    from megaomni.models.build import build_model

    cfg = small_config()
    torch.manual_seed(0)
    model = build_model(cfg, VOCAB, {"vision": IMAGE_PAD, "audio": AUDIO_PAD}.__getitem__)
    randomize_(model)
    model.double().eval()
    return cfg, model


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}


def vision_ref(cfg: OmniConfig, sd, patches, grids, times=None):
    v = cfg.model.vision
    return ref.vision_encoder(sd, "vision_encoder.", patches, grids, num_layers=v.num_layers,
                              heads=v.num_attention_heads, eps=v.norm_eps, merge=v.merge_size,
                              base=v.rotary_base, times=times)


def audio_ref(cfg: OmniConfig, sd, features, lengths):
    a = cfg.model.audio
    return ref.audio_encoder(sd, "audio_encoder.", features, lengths, num_layers=a.num_layers,
                             heads=a.num_attention_heads, eps=a.norm_eps, merge=a.downsample // 2,
                             base=a.rotary_base)


def random_patches(cfg: OmniConfig, grids, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    v = cfg.model.vision
    n = sum(h * w for h, w in grids)
    return torch.randn(n, v.in_channels * v.patch_size**2, generator=gen, dtype=torch.float64)


def random_frames(cfg: OmniConfig, lengths, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(sum(lengths), cfg.model.audio.n_mels, generator=gen, dtype=torch.float64)


# ----------------------------------------------------------------------------- rotary


def test_rope_tables_match_reference_angles():
    from megaomni.layers.rotary import rope_1d, rope_2d
    from megaomni.media.images import patch_positions

    pos = torch.tensor([0, 1, 2, 7, 3, 0, 40])
    got = rope_1d(pos, 16, 10000.0)
    assert got.shape == (7, 1, 1, 16)
    # float32 table vs float64 reference: angles up to 40 rad -> abs error ~ 40 * 6e-8
    torch.testing.assert_close(got[:, 0, 0].double(), ref.rope_angles_1d(pos, 16, 10000.0), rtol=1e-6, atol=1e-5)

    for h, w, m in ((2, 4, 2), (6, 4, 2), (3, 6, 3), (2, 2, 1)):
        positions = patch_positions(h, w, m)
        assert positions.tolist() == [list(p) for p in ref.image_patch_positions(h, w, m)]
        got = rope_2d(positions, 8, 100.0)
        assert got.shape == (h * w, 1, 1, 8)
        want = ref.rope_angles_2d(positions[:, 0], positions[:, 1], 8, 100.0)
        torch.testing.assert_close(got[:, 0, 0].double(), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError):
        rope_2d(torch.zeros(3, 2, dtype=torch.long), 6, 100.0)


def test_llm_rotary_table_and_rotate_half_match_reference(built):
    from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb

    cfg, model = built
    d = cfg.model.llm.hidden_size // cfg.model.llm.num_attention_heads
    # Positions as a packed row has them: each sample counts from 0.
    positions = [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]
    s = len(positions)
    ids = torch.tensor(positions).view(1, 1, s).expand(3, 1, s)
    table = model.llm.rotary_pos_emb(ids, model.llm.mrope_section)  # [s, 1, 1, d]
    want = ref.rope_angles_1d(positions, d, cfg.model.llm.rotary_base)
    torch.testing.assert_close(table[:, 0, 0].double(), want, rtol=1e-6, atol=1e-6)
    # megatron's application (non-interleaved rotate-half) vs the reference's, on the same angles
    x = torch.randn(s, 1, 3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = apply_rotary_pos_emb(x, want[:, None, None, :], config=model.llm.config)
    torch.testing.assert_close(got[:, 0], ref.apply_rope(x[:, 0], want), rtol=TIGHT, atol=TIGHT)


# ----------------------------------------------------------------------------- attention core


def _qkv(s, hq, hkv, d, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(s, h, d, generator=gen, dtype=torch.float64) for h in (hq, hkv, hkv))
    return q, k, v


@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2), (6, 2)])
@pytest.mark.parametrize("mode", ["causal", "bidirectional", "blocks", "blocks_causal"])
def test_sdpa_attention_matches_explicit_softmax(mode, hq, hkv):
    from megaomni.ops.attention import sdpa_attention

    s, d, lengths = 11, 8, [4, 1, 6]
    q, k, v = _qkv(s, hq, hkv, d, seed=hq * 10 + hkv)
    causal = mode in ("causal", "blocks_causal")
    cu = torch.tensor([0, 4, 5, 11], dtype=torch.int32) if mode.startswith("blocks") else None
    to_bhsd = lambda x: x.transpose(0, 1)[None]  # [s, h, d] -> [1, h, s, d]
    out = sdpa_attention(to_bhsd(q), to_bhsd(k), to_bhsd(v), causal=causal, cu_seqlens=cu, scale=0.3)
    assert out.shape == (1, hq, s, d)
    if cu is not None:
        allowed = ref.block_allowed(lengths, causal=causal)
    else:
        allowed = ref.causal_allowed(s) if causal else None
    want = ref.attention(q, k, v, allowed, scale=0.3)
    torch.testing.assert_close(out[0].transpose(0, 1), want, rtol=TIGHT, atol=TIGHT)


@pytest.mark.parametrize("layout", ["sbhd", "sbhd_packed", "thd"])
def test_sdpa_module_layouts(megatron_cpu, layout):
    """SDPAttention (megatron's core-attention interface) in its three layouts; GQA 4 q / 2 kv heads."""
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.transformer.enums import AttnMaskType

    from megaomni.layers.transformer_config import make_transformer_config
    from megaomni.ops.attention import SDPAttention

    config = make_transformer_config(num_layers=1, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                                     ffn_hidden_size=48, norm_eps=1e-6)
    d, lengths = 8, [3, 5, 2]
    s = sum(lengths)
    for mask_type in (AttnMaskType.causal, AttnMaskType.no_mask):
        core = SDPAttention(config, 1, mask_type, "self").double()
        causal = mask_type == AttnMaskType.causal
        if layout == "sbhd":  # batch of 2 independent sequences, no packing
            b = 2
            qkv = [_qkv(s, 4, 2, d, seed=i) for i in range(b)]
            q, k, v = (torch.stack([x[j] for x in qkv], dim=1) for j in range(3))  # [s, b, h, d]
            out = core(q, k, v, None)
            assert out.shape == (s, b, 4 * d)
            for i in range(b):
                want = ref.attention(*qkv[i], ref.causal_allowed(s) if causal else None)
                torch.testing.assert_close(out[:, i], want.reshape(s, -1), rtol=TIGHT, atol=TIGHT)
            continue
        q, k, v = _qkv(s, 4, 2, d, seed=7)
        cu = torch.tensor([0, 3, 8, 10], dtype=torch.int32)
        params = PackedSeqParams(qkv_format=layout[:4], cu_seqlens_q=cu, cu_seqlens_kv=cu,
                                 max_seqlen_q=5, max_seqlen_kv=5)
        if layout == "thd":
            out = core(q, k, v, None, packed_seq_params=params)
        else:
            out = core(q[:, None], k[:, None], v[:, None], None, packed_seq_params=params)[:, 0]
        want = ref.attention(q, k, v, ref.block_allowed(lengths, causal=causal))
        torch.testing.assert_close(out.reshape(s, -1), want.reshape(s, -1), rtol=TIGHT, atol=TIGHT)


# ----------------------------------------------------------------------------- projector, merge


def test_projector_matches_reference():
    from megaomni.layers.projector import MLPProjector

    torch.manual_seed(0)
    proj = MLPProjector(6, 5, merge=4).double()
    x = torch.randn(12, 6, dtype=torch.float64)
    out = proj(x)
    assert out.shape == (3, 5)
    torch.testing.assert_close(out, ref.projector(state(proj), "", x, 4), rtol=TIGHT, atol=TIGHT)


def test_merge_media_fills_placeholders_sample_by_sample():
    from megaomni.models.omni import merge_media

    torch.manual_seed(0)
    tokens = torch.tensor([[1, 9, 2, 9, 9, 3], [9, 4, 4, 9, 0, 0]])  # b=2, s=6, pad id 9
    emb = torch.randn(6, 2, 4, dtype=torch.float64)  # [s, b, h]
    features = torch.arange(5 * 4, dtype=torch.float64).view(5, 4)
    out = merge_media(emb, tokens, (9,), features)
    assert out.shape == emb.shape
    order = [(0, 1), (0, 3), (0, 4), (1, 0), (1, 3)]  # (sample, position), the packing order
    for k, (b, t) in enumerate(order):
        assert torch.equal(out[t, b], features[k])
    text = tokens.T != 9
    assert torch.equal(out[text], emb[text])
    assert torch.equal(out.transpose(0, 1), ref.merge_features(emb.transpose(0, 1), tokens, 9, features))
    for n in (4, 6):
        with pytest.raises(ValueError, match="5 placeholder tokens"):
            merge_media(emb, tokens, (9,), torch.zeros(n, 4, dtype=torch.float64))
    # Two pads of one modality (Qwen2-VL's image and video pads): features fill both, in order.
    mixed = tokens.clone()
    mixed[0, 3] = mixed[1, 0] = 8
    assert torch.equal(merge_media(emb, mixed, (9, 8), features), out)


# ----------------------------------------------------------------------------- encoders


VISION_GRIDS = [[2, 4], [6, 4]]


def test_vision_encoder_matches_reference(built):
    cfg, model = built
    patches = random_patches(cfg, VISION_GRIDS, seed=1)
    with torch.no_grad():
        out = model.vision_encoder(vision_batch(patches, VISION_GRIDS))
    assert out.shape == (2 + 6, cfg.model.llm.hidden_size)
    assert_close_ref(out, vision_ref(cfg, state(model), patches, VISION_GRIDS), what="vision")


def test_vision_images_are_isolated(built):
    """Image 1's tokens do not depend on image 2 (its pixels or its size), and vice versa."""
    cfg, model = built
    def enc(*args):
        return model.vision_encoder(vision_batch(*args))
    patches = random_patches(cfg, VISION_GRIDS, seed=1)
    other = torch.cat([patches[:8], random_patches(cfg, [[4, 4]], seed=2)])
    with torch.no_grad():
        a = enc(patches, torch.tensor(VISION_GRIDS))
        b = enc(other, torch.tensor([[2, 4], [4, 4]]))
        alone = enc(patches[:8], torch.tensor([[2, 4]]))
        second_alone = enc(patches[8:], torch.tensor([[6, 4]]))
    assert b.shape == (2 + 4, a.shape[1])
    torch.testing.assert_close(b[:2], a[:2], rtol=TIGHT, atol=TIGHT)
    torch.testing.assert_close(alone, a[:2], rtol=TIGHT, atol=TIGHT)
    torch.testing.assert_close(second_alone, a[2:], rtol=TIGHT, atol=TIGHT)
    assert not torch.allclose(b[2:6], a[2:6])  # image 2 did change


# A 4-frame video of 2x4 patches (t = 0..3, frame 3 at a larger t to reach the faster-turning
# frequencies' later periods), then a still 6x4 image (t = 0).
VIDEO_GRIDS, VIDEO_TIMES = [[2, 4]] * 4 + [[6, 4]], [0, 1, 2, 11, 0]


def test_temporal_embedding_matches_reference():
    from megaomni.media.vision_encoder import temporal_embedding

    times = torch.tensor([0, 1, 2, 11, 40])
    got = temporal_embedding(times, 16)
    assert got.shape == (5, 16) and torch.equal(got[0], torch.zeros(16))  # exactly 0 at t = 0
    want = torch.stack([ref.temporal_embedding(t, 16) for t in times.tolist()])
    # float32 angles up to 40 rad (abs error ~ 40 * 6e-8), over sqrt(16)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    assert (want.norm(dim=-1) <= 2**0.5).all() and want[1:].norm(dim=-1).min() > 0.1


def test_vision_encoder_with_frame_times_matches_reference(built):
    cfg, model = built
    patches = random_patches(cfg, VIDEO_GRIDS, seed=11)
    with torch.no_grad():
        out = model.vision_encoder(vision_batch(patches, VIDEO_GRIDS, VIDEO_TIMES))
    assert out.shape == (4 * 2 + 6, cfg.model.llm.hidden_size)
    want = vision_ref(cfg, state(model), patches, VIDEO_GRIDS, VIDEO_TIMES)
    assert_close_ref(out, want, what="vision with frame times")
    # The control: the reference without the temporal embedding is far from it.
    assert not torch.allclose(want, vision_ref(cfg, state(model), patches, VIDEO_GRIDS), rtol=1e-3, atol=1e-3)


def test_still_images_are_unchanged_by_frame_times(built):
    """t = 0 everywhere gives bit for bit the output without times (the encoder before video
    support); another t changes that frame's tokens and no other image's."""
    cfg, model = built
    def enc(*args):
        return model.vision_encoder(vision_batch(*args))
    patches, grids = random_patches(cfg, VIDEO_GRIDS, seed=12), torch.tensor(VIDEO_GRIDS)
    with torch.no_grad():
        without = enc(patches, grids)
        still = enc(patches, grids, torch.zeros(len(VIDEO_GRIDS), dtype=torch.long))
        moved = enc(patches, grids, torch.tensor([0, 0, 3, 0, 0]))
    assert torch.equal(still, without)
    frame = slice(2 * 2, 3 * 2)  # frame 2's two tokens
    assert not torch.allclose(moved[frame], without[frame], rtol=1e-3, atol=1e-3)
    others = torch.ones(len(without), dtype=torch.bool)
    others[frame] = False
    torch.testing.assert_close(moved[others], without[others], rtol=TIGHT, atol=TIGHT)


# Stem lengths ceil(n/2), then padded to a multiple of merge=2: covers odd frame counts, a stem
# length that needs padding, and a clip shorter than one merged token.
AUDIO_CASES = [
    pytest.param([9, 6], id="odd_longest"),
    pytest.param([8, 12, 4], id="even"),
    pytest.param([7, 12], id="odd_shorter"),
    pytest.param([12, 5, 3], id="odd_shorter_3clips"),
]


@pytest.mark.parametrize("lengths", AUDIO_CASES)
def test_audio_encoder_matches_reference(built, lengths):
    cfg, model = built
    frames = random_frames(cfg, lengths, seed=3)
    with torch.no_grad():
        out = model.audio_encoder(audio_batch(frames, lengths))
    assert out.shape == (sum(-(-n // 4) for n in lengths), cfg.model.llm.hidden_size)
    assert_close_ref(out, audio_ref(cfg, state(model), frames, lengths), what=f"audio {lengths}")


def test_audio_stem_matches_per_clip_convolution(built):
    """The batched stem must equal each clip convolved on its own (zero padding of that clip only)."""
    cfg, model = built
    lengths = [7, 12, 5, 6]
    frames = random_frames(cfg, lengths, seed=4)
    with torch.no_grad():
        hidden, out_lengths = model.audio_encoder.stem(frames, torch.tensor(lengths))
    assert out_lengths.tolist() == [4, 6, 3, 3]
    sd = state(model)
    want = torch.cat([ref.audio_stem(sd, "audio_encoder.", c) for c in torch.split(frames, lengths)])
    torch.testing.assert_close(hidden, want, rtol=TIGHT, atol=TIGHT)


@pytest.mark.parametrize("second", [pytest.param(6, id="shorter_second"), pytest.param(13, id="longer_second")])
def test_audio_clips_are_isolated(built, second):
    """Clip 1 (odd length 7) gives the same tokens alone or next to another clip of any length."""
    cfg, model = built
    def enc(*args):
        return model.audio_encoder(audio_batch(*args))
    first = random_frames(cfg, [7], seed=5)
    with torch.no_grad():
        alone = enc(first, torch.tensor([7]))
        paired = enc(torch.cat([first, random_frames(cfg, [second], seed=6)]), torch.tensor([7, second]))
    assert alone.shape == (2, cfg.model.llm.hidden_size)
    assert paired.shape == (2 + -(-second // 4), alone.shape[1])
    torch.testing.assert_close(paired[:2], alone, rtol=TIGHT, atol=TIGHT)


# ----------------------------------------------------------------------------- whole model


def omni_batch(cfg: OmniConfig, seed: int = 7):
    """Two samples, both modalities: sample 0 holds image [2,4] (2 tokens) and a 9-frame clip
    (3 tokens); sample 1 a 6-frame clip (2 tokens) before image [6,4] (6 tokens)."""
    from megaomni.data.batch import Batch

    gen = torch.Generator().manual_seed(seed)
    s = 20
    tokens = torch.randint(10, VOCAB, (2, s), generator=gen)
    tokens[0, 2:4] = IMAGE_PAD
    tokens[0, 6:9] = AUDIO_PAD
    tokens[1, 1:3] = AUDIO_PAD
    tokens[1, 5:11] = IMAGE_PAD
    labels = torch.randint(0, VOCAB, (2, s), generator=gen)
    grids, audio_lengths = [[2, 4], [6, 4]], [9, 6]
    return Batch(
        tokens=tokens, labels=labels, loss_mask=torch.ones(2, s), position_ids=torch.arange(s).expand(2, s),
        media=make_media(image_patches=random_patches(cfg, grids, seed=seed + 1), image_grids=grids,
                         audio_features=random_frames(cfg, audio_lengths, seed=seed + 2), audio_lengths=audio_lengths),
        num_samples=2,
    ), grids, audio_lengths


def omni_ref(cfg: OmniConfig, sd, batch, grids, audio_lengths) -> torch.Tensor:
    llm = cfg.model.llm
    emb = sd["llm.embedding.word_embeddings.weight"][batch.tokens]  # [b, s, h]
    emb = ref.merge_features(emb, batch.tokens, IMAGE_PAD, vision_ref(cfg, sd, image_patches(batch), grids))
    emb = ref.merge_features(emb, batch.tokens, AUDIO_PAD, audio_ref(cfg, sd, audio_features(batch), audio_lengths))
    return ref.llm_token_loss(sd, "llm.", emb, batch.labels, num_layers=llm.num_layers,
                              heads=llm.num_attention_heads, groups=llm.num_query_groups, eps=llm.norm_eps,
                              base=llm.rotary_base)


def test_omni_per_token_loss_matches_reference(built):
    cfg, model = built
    batch, grids, audio_lengths = omni_batch(cfg)
    with torch.no_grad():
        loss = run_model(model, batch)
    # megatron's vocab_parallel_cross_entropy casts the logits to float32: the loss is float32
    # even for a float64 model, hence RTOL (float32 eps ~6e-8 on losses of a few nats).
    assert loss.shape == (2, 20) and loss.dtype == torch.float32
    want = omni_ref(cfg, state(model), batch, grids, audio_lengths)
    assert_close_ref(loss.double(), want, what="per-token loss")
    # the media matter: zeroing them changes the loss at the tokens after them
    batch.media["vision"].values = torch.zeros_like(image_patches(batch))
    with torch.no_grad():
        assert not torch.allclose(run_model(model, batch), loss)


GRAD_PARAMS = [
    "vision_encoder.patch_embed.weight",
    "vision_encoder.blocks.layers.1.self_attention.linear_qkv.weight",
    "audio_encoder.conv1.weight",
    "audio_encoder.blocks.layers.0.input_layernorm.weight",
    "audio_encoder.projector.fc1.weight",
    "llm.embedding.word_embeddings.weight",
    "llm.decoder.layers.0.self_attention.linear_qkv.weight",
    "llm.decoder.layers.1.mlp.linear_fc1.weight",
    "llm.decoder.final_layernorm.weight",
    "llm.output_layer.weight",
]


def test_omni_gradients_match_reference_autograd(built):
    cfg, model = built
    batch, grids, audio_lengths = omni_batch(cfg)
    weights = torch.rand(batch.labels.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9))

    model.zero_grad(set_to_none=True)
    (run_model(model, batch) * weights).sum().backward()
    params = dict(model.named_parameters())

    sd = state(model)
    for name in GRAD_PARAMS:
        sd[name].requires_grad_(True)
    ref_loss = (omni_ref(cfg, sd, batch, grids, audio_lengths) * weights).sum()
    ref_grads = torch.autograd.grad(ref_loss, [sd[n] for n in GRAD_PARAMS])
    for name, want in zip(GRAD_PARAMS, ref_grads):
        got = params[name].grad
        assert got is not None, name
        assert want.abs().max() > 0, name
        assert_close_ref(got, want, what=f"grad {name}")
    model.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- encoder calls


def test_one_encoder_call_over_several_shares_matches_one_call_each(built):
    """The joint schedule may encode several micro-batches' shares in one call per modality
    (pipeline.encoder_group): merged inputs, then outputs split back per share. Outputs, and
    parameter gradients from the merged backward, equal those of one call per share (float64,
    1e-12); a share without frame times counts as frame 0."""
    from megaomni.data.batch import Batch
    from megaomni.pipeline.shares import media_items, merge_inputs, share_inputs, share_outputs, split_outputs

    cfg, model = built
    encoders = {"vision": model.vision_encoder, "audio": model.audio_encoder}
    specs = [([[2, 4], [4, 2]], [7, 12], True), ([[2, 2]], [], False), ([[6, 4]], [9], True)]
    batches = []
    for seed, (grids, clips, timed) in enumerate(specs):
        tokens = torch.zeros(1, 8, dtype=torch.long)
        batches.append(Batch(
            tokens=tokens, labels=tokens, loss_mask=torch.ones(1, 8), position_ids=torch.arange(8)[None],
            media=make_media(image_patches=random_patches(cfg, grids, seed), image_grids=grids,
                             image_times=[seed + 1] * len(grids) if timed else None,
                             audio_features=random_frames(cfg, clips, seed) if clips else None,
                             audio_lengths=clips if clips else None)))
    items = [media_items(b.media) for b in batches]
    shares = [tuple(range(len(its)))[::2] or tuple(range(len(its))) for its in items]  # a share of each
    grads = [{n: torch.randn(rows, cfg.model.llm.hidden_size, dtype=torch.float64)
              for n, rows in share_outputs(its, share).items()} for its, share in zip(items, shares)]

    def run(calls):
        model.zero_grad(set_to_none=True)
        outputs = []
        for call in calls:
            inputs = merge_inputs([share_inputs(batches[m].media, items[m], shares[m]) for m in call])
            out = {n: encoders[n](media) for n, media in sorted(inputs.items())}
            torch.autograd.backward([out[n] for n in sorted(out)],
                                    [torch.cat([grads[m][n] for m in call if n in grads[m]]) for n in sorted(out)])
            outputs += split_outputs({n: t.detach() for n, t in out.items()},
                                     [share_outputs(items[m], shares[m]) for m in call])
        return outputs, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    separate, separate_grads = run([(0,), (1,), (2,)])
    merged, merged_grads = run([(0, 1, 2)])
    assert [sorted(o) for o in merged] == [sorted(o) for o in separate] == [sorted(g) for g in grads]
    for a, b in zip(merged, separate):
        for n in a:
            torch.testing.assert_close(a[n], b[n], rtol=1e-12, atol=1e-12)
    assert merged_grads.keys() == separate_grads.keys() and merged_grads
    for k in merged_grads:
        torch.testing.assert_close(merged_grads[k], separate_grads[k], rtol=1e-12, atol=1e-12, msg=k)
