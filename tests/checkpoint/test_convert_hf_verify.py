"""``tools/convert_hf.py verify`` on its built-in input: a tiny Hugging Face folder saved with its
tokenizer is probed with a conversation holding an image and a video (Qwen2-VL, Qwen2.5-VL), a
clip (Qwen2-Audio), all three (Qwen2.5-Omni's thinker), an image (LLaVA) or text alone (Qwen2,
Qwen3-MoE), made by megaomni's data pipeline; the two models' logits agree (fp32, 1e-4) on a
faithful import, and so does a first training step's loss on the answer (1e-5 relative),
and one weight changed in the Hugging Face folder moves them far apart: a vision weight past
``--tolerance`` (the text-only check of a folder without a tokenizer cannot see it, and says
that media were not probed); the thinker's vision and audio weights, one at a time."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")

from megaomni.checkpoint.hf.convert import (  # noqa: E402
    import_hf,
    load_state,
    model_config,
    read_hf,
    write_hf,
)
from megaomni.config import OmniConfig  # noqa: E402
from megaomni.data.hf_tokenizer import HFTokenizer  # noqa: E402
from megaomni.models.build import padded_vocab_size  # noqa: E402
from tests.checkpoint.round_trip import save_perturbed  # noqa: E402
from tests.checkpoint.test_hf_qwen2_5_omni import hf_model as omni_thinker  # noqa: E402
from tests.conftest import ROOT  # noqa: E402
from tests.data import hf_tokenizers  # noqa: E402

# tools/ is scripts, not a package: the tool as a module, called in this process (its main returns the exit code).
_spec = importlib.util.spec_from_file_location("convert_hf", os.path.join(ROOT, "tools", "convert_hf.py"))
convert_hf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert_hf)

TEXT = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512)


def vision_language(folder, model_class, config_class, vision_config: dict, **text) -> None:
    """A tiny Qwen2-VL-family model saved with its tokenizer in ``folder``: the tokenizer's ids, its
    vocabulary padded, multimodal RoPE; ``text``: more of its text config."""
    tokenizer = HFTokenizer(hf_tokenizers.qwen2_vl(str(folder)))
    ids = {t: tokenizer.token_id(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    torch.manual_seed(0)
    model = model_class(config_class(
        text_config=dict(TEXT, vocab_size=padded_vocab_size(tokenizer.vocab_size, 0),
                         rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0),
                         **text),
        vision_config=vision_config, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"]))
    save_perturbed(model.float(), folder, ("norm", "ln_q"))


def qwen2_vl(folder) -> None:
    vision_language(folder, transformers.Qwen2VLForConditionalGeneration, transformers.Qwen2VLConfig,
                    dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, initializer_range=0.3),
                    initializer_range=0.3)


def text_llm(folder, model_class, config_class, **fields) -> None:
    """A text-only LLM with a ChatML tokenizer: the probe is the conversation's text."""
    tokenizer = HFTokenizer(hf_tokenizers.qwen2_audio(str(folder)))
    torch.manual_seed(0)
    model = model_class(config_class(**TEXT, vocab_size=padded_vocab_size(tokenizer.vocab_size, 0), **fields))
    save_perturbed(model.float(), folder)


def qwen2(folder) -> None:
    text_llm(folder, transformers.Qwen2ForCausalLM, transformers.Qwen2Config)


def qwen3_moe(folder) -> None:
    """Normalised top-2 of 4 experts, QK-norm."""
    text_llm(folder, transformers.Qwen3MoeForCausalLM, transformers.Qwen3MoeConfig, head_dim=16, num_experts=4,
             num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1, mlp_only_layers=[],
             norm_topk_prob=True, initializer_range=0.2)


def qwen2_5_vl(folder) -> None:
    """Qwen2.5-VL's real temporal spacing (2 positions per second; data.video_fps 2 by default)."""
    vision_language(folder, transformers.Qwen2_5_VLForConditionalGeneration, transformers.Qwen2_5_VLConfig,
                    dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=48, num_heads=4,
                         window_size=56, fullatt_block_indexes=[1], tokens_per_second=2))


def qwen2_audio(folder) -> None:
    """Whisper's window (1500 positions: 3000 frames), as megaomni's Whisper features make it."""
    tokenizer = HFTokenizer(hf_tokenizers.qwen2_audio(str(folder)))
    torch.manual_seed(0)
    model = transformers.Qwen2AudioForConditionalGeneration(transformers.Qwen2AudioConfig(
        text_config=dict(TEXT, model_type="qwen2", vocab_size=padded_vocab_size(tokenizer.vocab_size, 0)),
        audio_config=dict(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                          num_mel_bins=16, max_source_positions=1500),
        audio_token_id=tokenizer.token_id("<|AUDIO|>")))
    save_perturbed(model.float(), folder, ("norm",))


def qwen2_5_omni(folder) -> None:
    """Qwen2.5-Omni's thinker as its own test builds it (5 positions a second: the probe's video
    groups 2 apart at data.video_fps 4; the audio tower's chunks of 20 frames: the clip in 5),
    its weights drawn wider (std 0.2, as Qwen2-VL's here): one changed moves the logits far."""
    omni_thinker(folder, HFTokenizer(hf_tokenizers.qwen2_5_omni(str(folder))), initializer_range=0.2)


def llava(folder) -> None:
    tokenizer = HFTokenizer(hf_tokenizers.llava(str(folder)))
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, patch_size=14, image_size=56, projection_dim=16),
        text_config=dict(TEXT, model_type="llama", vocab_size=padded_vocab_size(tokenizer.vocab_size, 0)),
        image_token_id=tokenizer.token_id("<image>")))
    save_perturbed(model.float(), folder, ("norm", "layrnorm"))


def planted(hf_dir, out, name: str, tokenizer: bool = True) -> None:
    """Hugging Face folder ``hf_dir`` written to ``out`` with its tensor ``name`` 1.5 times what it
    is: a wrong weight; its tokenizer's files copied (``tokenizer``) or not."""
    config, tensors = read_hf(str(hf_dir))
    tensors[name] = tensors[name] * 1.5
    write_hf(str(out), config, tensors)
    for file in os.listdir(hf_dir) if tokenizer else ():
        if file.startswith(("tokenizer", "chat_template")):
            shutil.copy(os.path.join(hf_dir, file), os.path.join(out, file))


def verify(capsys, hf_dir, checkpoint, *extra: str) -> tuple[int, float, str]:
    """The tool's exit code, the difference it prints and its line."""
    capsys.readouterr()
    code = convert_hf.main(["verify", str(hf_dir), str(checkpoint), *extra])
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith("largest logit difference")]
    return code, float(line.split("largest logit difference: ")[1].split()[0]), line


def test_verify_probes_images_and_video_and_sees_a_wrong_vision_weight(tmp_path, capsys):
    qwen2_vl(tmp_path / "hf")
    assert convert_hf.main(["import", str(tmp_path / "hf"), str(tmp_path / "mo")]) == 0
    checkpoint = tmp_path / "mo" / "checkpoint"
    code, difference, line = verify(capsys, tmp_path / "hf", checkpoint, "--tolerance", "1e-4")
    assert code == 0 and difference < 1e-4, line
    assert "1 image (4x6 patches), 1 video (3 frames: 2x8x8 patches)" in line, line

    # One vision weight changed: the probe sees it, the text-only check (no tokenizer) cannot.
    planted(tmp_path / "hf", tmp_path / "wrong", "visual.blocks.1.mlp.fc1.weight")
    code, difference, line = verify(capsys, tmp_path / "wrong", checkpoint, "--tolerance", "1e-4")
    assert code == 1 and difference > 1e-2, line
    assert verify(capsys, tmp_path / "wrong", checkpoint)[0] == 0  # without --tolerance: it reports
    planted(tmp_path / "hf", tmp_path / "bare", "visual.blocks.1.mlp.fc1.weight", tokenizer=False)
    code, difference, line = verify(capsys, tmp_path / "bare", checkpoint)
    assert code == 0 and difference < 1e-4 and "media not probed: HF_DIR has no tokenizer" in line, line


@pytest.mark.parametrize("build, features, what, wrong", [
    pytest.param(qwen2_5_vl, "", "1 image (4x6 patches), 1 video (3 frames: 2x8x8 patches)", (), id="qwen2_5_vl"),
    # The clip's frames alone, in a zero-padded window; Whisper's features (the import's), the window.
    pytest.param(qwen2_audio, "megaomni", "1 clip (100 frames)", (), id="qwen2_audio"),
    pytest.param(qwen2_audio, "", "1 clip (100 frames)", (), id="qwen2_audio_whisper"),
    pytest.param(qwen2_5_omni, "", "1 image (4x6 patches), 1 video (3 frames: 2x8x8 patches), 1 clip (100 frames)",
                 ("visual.blocks.1.attn.k.weight", "audio_tower.layers.1.fc1.weight"), id="qwen2_5_omni"),
    pytest.param(llava, "", "1 image (4x4 patches)", (), id="llava"),
    pytest.param(qwen2, "", "tokens", (), id="qwen2"),
    pytest.param(qwen3_moe, "", "tokens", (), id="qwen3_moe"),
])
def test_probe_gives_hugging_faces_logits(megatron_cpu, tmp_path, build, features, what, wrong):
    """The probe of the other families, through the imported model in this process (the import's
    features unless ``features``); each of ``wrong`` planted in the Hugging Face folder moves the
    logits far apart."""
    from megaomni.checkpoint.hf import probe
    from megaomni.models.build import build_model

    build(tmp_path)
    imported = import_hf(str(tmp_path))
    cfg = OmniConfig(model=model_config(imported.sections))
    cfg.data.video_fps = 4.0  # Qwen2.5-VL: half a second per temporal group, not the 1 Hugging Face assumes without one
    cfg.model.audio.features = features or cfg.model.audio.features
    tokenizer = HFTokenizer(str(tmp_path))
    model = build_model(cfg, cfg.model.llm.vocab_size, tokenizer.media_pad_ids)
    load_state(model, imported.state)
    model.eval()
    hf = getattr(transformers, imported.architecture).from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    built = probe.build_probe(tokenizer, cfg, imported.architecture)
    assert what in built.describe() and "no <" not in built.describe(), built.describe()
    with torch.no_grad():
        want = hf(**probe.hf_inputs(imported.architecture, built, hf.config)).logits
    got = probe.logits(model, built)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-4, (got - want).abs().max()
    ours, theirs = probe.losses(model, hf, imported.architecture, built)  # a first step's, from the import
    assert abs(ours - theirs) < 1e-5 * theirs, (ours, theirs)
    for name in wrong:
        planted(tmp_path, tmp_path / "wrong", name, tokenizer=False)
        hf = getattr(transformers, imported.architecture).from_pretrained(str(tmp_path / "wrong"), dtype=torch.float32)
        with torch.no_grad():
            moved = (hf.eval()(**probe.hf_inputs(imported.architecture, built, hf.config)).logits - got).abs().max()
        assert moved > 1e-2, (name, moved)
