"""Config loading, overrides and validation: every bad value is one line naming the field."""

import os
import subprocess
import sys

import pytest

from megaomni.config import ConfigError, OmniConfig, load_config
from megaomni.validation import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "examples", "configs", "tiny_omni.yaml")


def test_yaml_and_overrides_typed():
    cfg = load_config(TINY, ["train.iters=7", "train.lr=1e-3", "parallel.tp=2", "data.zero_media=true"])
    assert cfg.train.iters == 7 and isinstance(cfg.train.iters, int)
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert cfg.parallel.tp == 2 and cfg.data.zero_media is True
    assert cfg.model.llm.hidden_size == 64  # from the file
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0  # ints accepted for floats


@pytest.mark.parametrize("override, field", [
    ("train.iterz=3", "train.iterz"),
    ("model.llm.hidden_size=abc", "model.llm.hidden_size"),
    ("train.iters=2.5", "train.iters"),
    ("data.zero_media=3", "data.zero_media"),
    ("train", "train"),
])
def test_load_errors_name_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(TINY, [override])
    assert str(err.value).startswith(field)


def _valid_cfg(tmp_path, *overrides):
    (tmp_path / "a.tar").write_bytes(b"")
    (tmp_path / "tokenizer.model").write_bytes(b"")
    return load_config(TINY, [f"data.path={tmp_path}", *overrides])


@pytest.mark.parametrize("overrides, world, expected", [
    (["parallel.tp=3"], 3, "parallel.tp=3: must divide model.llm.num_attention_heads=4"),
    (["parallel.tp=2"], 3, "parallel.tp*pp*cp=2: must divide the world size 3"),
    (["model.llm.num_query_groups=3"], 1, "model.llm.num_query_groups=3: must divide"),
    (["model.llm.hidden_size=66"], 1, "model.llm.hidden_size=66: must be divisible"),
    (["data.packing=false", "data.global_batch_size=12"], 1, "data.global_batch_size=12: must be a positive multiple"),
    (["data.seq_length=4096"], 1, "data.seq_length=4096: must not exceed"),
    (["train.warmup_iters=500"], 1, "train.warmup_iters=500"),
    (["train.exit_grace_s=-1"], 1, "train.exit_grace_s=-1.0: must be >= 0"),
    (["train.collapse_steps=-1"], 1, "train.collapse_steps=-1: must be >= 0 (0: no check)"),
    (["train.spike_factor=0.5"], 1, "train.spike_factor=0.5: must be > 1"),
    (["train.step_timeout_s=-5"], 1, "train.step_timeout_s=-5.0: must be >= 0"),
    (["checkpoint.keep_last=-1"], 1, "checkpoint.keep_last=-1: must be >= 0 (0: keep every checkpoint)"),
    (["data.path=/nonexistent/dir"], 1, "data.path=/nonexistent/dir: no such directory"),
    (["data.max_pixels=500"], 1, "data.max_pixels=500: must hold one merged patch"),
    (["data.min_pixels=20000"], 1, "data.min_pixels=20000: must not exceed data.max_pixels"),
    (["model.audio.downsample=3"], 1, "model.audio.downsample=3: must be a multiple of model.audio.stem_stride=2"),
    (["model.audio.projector=pool"], 1, "model.audio.projector=pool: valid: mlp, pool_linear"),
    (["model.audio.position_embedding=sinusoidal", "model.audio.max_positions=0"], 1,
     "model.audio.max_positions=0: must be a positive integer"),
    (["model.vision.window_size=100"], 1,
     "model.vision.window_size=100: must be 0 (no windows) or a multiple of patch_size*merge_size=28"),
    (["model.vision.full_attention_layers=[1]"], 1,
     "model.vision.full_attention_layers=[1]: only with windowed attention"),
    (["model.vision.window_size=56", "model.vision.full_attention_layers=[2]"], 1,
     "model.vision.full_attention_layers=[2]: layer indices from 0 to model.vision.num_layers-1=1"),
    (["data.video_fps=0"], 1, "data.video_fps=0.0: must be positive"),
    (["model.audio.chunk_frames=200"], 1, "model.audio.chunk_frames=200: needs model.audio.projector=pool_linear"),
    (["model.vision.seconds_per_chunk=-1"], 1, "model.vision.seconds_per_chunk=-1: must be >= 0"),
    (["data.audio_in_video=true", "model.vision.seconds_per_chunk=2"], 1,
     "data.audio_in_video=true: needs model.vision.tokens_per_second and seconds_per_chunk > 0"),
    (["model.vision.hidden_size=72", "model.vision.num_attention_heads=4"], 1,
     "model.vision.hidden_size/num_attention_heads=18: rotary embeddings need a head dim divisible by 4"),
    (["model.vision.resize=crop"], 1,
     "model.vision.resize=crop: must be one of fit, smart_resize, shortest_edge_crop, square"),
    (["model.vision.resample=lanczos"], 1, "model.vision.resample=lanczos: must be one of pil, torch"),
    (["model.vision.image_mean=[0.5, 0.5]"], 1, "model.vision.image_mean=[0.5, 0.5]: needs one value, or one per"),
    (["model.vision.image_std=[0]"], 1, "model.vision.image_std=[0.0]: must be positive"),
    (["model.vision.temporal_patch_size=0"], 1, "model.vision.temporal_patch_size=0: must be a positive integer"),
    (["model.vision.resize=square", "model.vision.image_size=230"], 1,
     "model.vision.image_size=230: must be a positive multiple of model.vision.patch_size*merge_size=28"),
    (["model.vision.resize=square", "data.max_patches=100"], 1,
     "data.max_patches=100: must hold one 224-pixel image, 256 patches"),
    (["model.audio.features=mel"], 1, "model.audio.features=mel: must be one of megaomni, whisper"),
    (["model.audio.features=whisper", "data.max_audio_seconds=40"], 1,
     "data.max_audio_seconds=40.0: must be at most Whisper's 30 s window"),
    (["model.audio.features=whisper", "data.max_audio_seconds=30", "data.max_audio_frames=2000"], 1,
     "data.max_audio_frames=2000: must hold one Whisper window, 3000 frames"),
])
def test_validation_rules(tmp_path, overrides, world, expected):
    cfg = _valid_cfg(tmp_path, *overrides)
    with pytest.raises(ConfigError) as err:
        validate(cfg, world)
    assert str(err.value).startswith(expected), str(err.value)


def test_valid_config_passes(tmp_path):
    validate(_valid_cfg(tmp_path), 1)
    validate(_valid_cfg(tmp_path, "parallel.tp=2"), 4)


def test_missing_data_path():
    with pytest.raises(ConfigError, match="data.path is empty"):
        validate(OmniConfig(), 1)


@pytest.mark.parametrize("args, env, expected", [
    (["train.iterz=3"], {}, "config error: train.iterz: unknown key"),
    (["model.llm.hidden_size=abc"], {}, "config error: model.llm.hidden_size='abc': expected int"),
    (["parallel.tp=3"], {}, "config error: parallel.tp=3: must divide model.llm.num_attention_heads=4"),
    (["parallel.tp=2"], {"WORLD_SIZE": "3"}, "config error: parallel.tp*pp*cp=2: must divide the world size 3"),
    (["data.path=/nonexistent/dir"], {}, "config error: data.path=/nonexistent/dir: no such directory"),
])
def test_cli_exits_with_one_line(args, env, expected):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "pretrain_omni.py"), "--config", TINY, *args],
        capture_output=True, text=True, env={**os.environ, **env}, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_cli_help_lists_fields():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "pretrain_omni.py"), "--help"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0
    assert "train.iters = 200" in proc.stdout and "parallel.tp = 1" in proc.stdout
