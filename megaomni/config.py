"""Typed run configuration: dataclasses, YAML loading, ``KEY=VALUE`` overrides, validation.

Every problem is reported as one :class:`ConfigError` line naming the field, the bad value and
what would be valid, before any process group or model exists.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml


class ConfigError(ValueError):
    """A configuration problem, worded for the user (one line)."""


@dataclass
class MoEConfig:
    """Mixture-of-experts MLPs in the LLM (megatron-core's MoE layer and token dispatchers)."""

    num_experts: int = 0  # 0: dense LLM
    top_k: int = 2
    layer_freq: int = 1  # every layer_freq-th layer is MoE (1: all)
    ffn_hidden_size: int = 0  # per expert; 0: model.llm.ffn_hidden_size
    shared_expert_ffn_hidden_size: int = 0  # 0: no shared expert
    balancing: str = "aux_loss"  # aux_loss | aux_loss_free (expert bias) | none
    aux_loss_coeff: float = 1e-2
    bias_update_rate: float = 1e-3  # aux_loss_free: expert-bias step per update
    token_dispatcher: str = "alltoall"  # alltoall | allgather
    # The local experts' GEMMs (megaomni.ops.grouped_gemm): auto (torch._grouped_mm where it runs
    # and there are more than 8 local experts, else the loop) | torch | cuda (cuBLAS grouped
    # GEMM, csrc/) | loop (one GEMM per expert, megatron-core's SequentialMLP)
    grouped_gemm: str = "auto"
    # The chosen experts' weights: their softmax renormalised over the top k (true), or the
    # softmax over all experts taken as it is (false; Qwen3-MoE's norm_topk_prob)
    normalize_top_k: bool = True

    @property
    def enabled(self) -> bool:
        return self.num_experts > 0


@dataclass
class LLMConfig:
    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_query_groups: int = 2
    ffn_hidden_size: int = 176
    vocab_size: int = 0  # 0: taken from the tokenizer, padded to a multiple of 64
    max_seq_len: int = 512
    rotary_base: int = 10000  # megatron-core's GPTModel takes an int
    norm_eps: float = 1e-6
    init_std: float = 0.02
    tie_embeddings: bool = False
    qkv_bias: bool = False  # biases on the query, key and value projections (Qwen2)
    qk_norm: bool = False  # RMSNorm of each query and key head before RoPE (Qwen3)
    head_dim: int = 0  # 0: hidden_size / num_attention_heads (Qwen3 sets it apart)
    # Multimodal RoPE (Qwen2-VL): rotary frequency pairs driven by the temporal, height and width
    # position of each token (media tokens: their grid; text: all three equal); sums to head_dim/2.
    # Empty: plain RoPE over the token's position.
    mrope_section: list[int] = field(default_factory=list)
    moe: MoEConfig = field(default_factory=MoEConfig)


NORMS = ("rmsnorm", "layernorm")  # an encoder's norm (LayerNorm with a bias)
ACTIVATIONS = ("swiglu", "gelu", "gelu_tanh", "quick_gelu")  # an encoder's MLP (SwiGLU gated, the rest not)
VISION_POSITIONS = ("rope_2d", "learned")  # model.vision.position_embedding


@dataclass
class VisionConfig:
    enabled: bool = True
    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    ffn_hidden_size: int = 176
    patch_size: int = 14
    merge_size: int = 2  # merge_size x merge_size patches become one LLM token
    in_channels: int = 3
    rotary_base: float = 10000.0
    norm_eps: float = 1e-6
    # The blocks (defaults: megaomni's own encoder; an imported family sets its own).
    norm: str = "rmsnorm"  # rmsnorm | layernorm (with bias)
    activation: str = "swiglu"  # swiglu | gelu | gelu_tanh | quick_gelu
    bias: bool = False  # biases on every linear of the blocks
    projector_hidden_size: int = 0  # the projector's inner width; 0: the LLM's hidden size
    # Video frames' fixed sinusoidal time offset; off where the LLM's M-RoPE carries time (Qwen2-VL).
    temporal_embedding: bool = True
    # How images are sized: fit (within data.min_pixels/max_pixels, sides multiples of
    # patch_size*merge_size), smart_resize (Qwen2-VL's rule: fit but for sides under half a merge
    # cell), shortest_edge_crop (CLIP: the short side to image_size, then the centre square),
    # square (SigLIP: image_size x image_size).
    resize: str = "fit"
    image_size: int = 224  # shortest_edge_crop / square: the square's side in pixels (and learned positions')
    # Bicubic as Pillow does it (HF's PIL processors) or torch (HF's torchvision processors: the
    # fast image processors and every video processor).
    resample: str = "pil"
    # Pixels x/255 are normalised (x/255 - mean) / std: one value for every channel, or one per
    # channel (OpenAI CLIP's for Qwen2-VL and CLIP, 0.5 for SigLIP).
    image_mean: list[float] = field(default_factory=lambda: [0.5])
    image_std: list[float] = field(default_factory=lambda: [0.5])
    # Frames per temporal patch (Qwen2-VL: 2): a still is repeated to fill one, a video's frames
    # are grouped (the last repeated to fill the final group), each group one encoder item.
    temporal_patch_size: int = 1
    # Windowed attention (Qwen2.5-VL): each image's merged tokens in square windows of window_size
    # pixels a side (window_size / (patch_size*merge_size) tokens; the last ones of a row or column
    # partial), attention inside each window but in full_attention_layers (0-based), which attend
    # over the whole image. 0: whole images in every layer.
    window_size: int = 0
    full_attention_layers: list[int] = field(default_factory=list)
    # A video's M-RoPE temporal positions (Qwen2.5-VL): tokens_per_second positions per second, a
    # temporal group spanning temporal_patch_size / data.video_fps seconds (positions truncated to
    # integers). 0: a group's index (Qwen2-VL).
    tokens_per_second: int = 0
    # The float32 products of a group's position in the order Qwen2.5-Omni takes them, (index *
    # seconds) * tokens_per_second; false: Qwen2.5-VL's, index * (tokens_per_second * seconds).
    # They differ by one at some frame rates (25 fps, 25 positions per second).
    seconds_first: bool = False
    # data.audio_in_video: a video and its audio track alternate in chunks of this many seconds of
    # positions (tokens_per_second * seconds_per_chunk; Qwen2.5-Omni's 2). 0: no chunks.
    seconds_per_chunk: int = 0
    # Patch positions: rope_2d (rotary over each image's grid, any size) | learned (CLIP's and
    # SigLIP's table of (image_size / patch_size)^2 positions in raster order, +1 for the class
    # token; a fixed resize only).
    position_embedding: str = "rope_2d"
    class_token: bool = False  # a learned row before each image's patches (CLIP's)
    keep_class_token: bool = False  # its output is a feature too (LLaVA's "full"); false: dropped ("default")
    pre_norm: bool = False  # a norm of the embeddings before the blocks (CLIP's pre_layrnorm)
    patch_bias: bool = False  # a bias on the patch embedding (SigLIP's)
    # The output the projector reads: 0, the last layer's through the final norm; n > 0, layer n's;
    # -n, Hugging Face's hidden_states[-n] (-1: the last layer's, -2: LLaVA's penultimate); those
    # two without the final norm. Layers after it and the final norm are kept, frozen, for export.
    feature_layer: int = 0

    def layers_used(self) -> int:
        """The layers run: up to the one :attr:`feature_layer` names."""
        f = self.feature_layer
        return self.num_layers if f == 0 else f if f > 0 else self.num_layers + 1 + f


@dataclass
class AudioConfig:
    enabled: bool = True
    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    ffn_hidden_size: int = 176
    n_mels: int = 40
    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    stem_stride: int = 2  # the stem's second convolution's stride: log-mel frames per transformer row
    downsample: int = 4  # log-mel frames per LLM token (stem_stride, then the projector merges the rest)
    rotary_base: float = 10000.0
    norm_eps: float = 1e-6
    norm: str = "rmsnorm"  # rmsnorm | layernorm (with bias)
    activation: str = "swiglu"  # swiglu | gelu | gelu_tanh | quick_gelu
    bias: bool = False  # biases on every linear of the blocks
    # megaomni: log-mel frames of the clip as it is (HTK filters). whisper: WhisperFeatureExtractor's
    # (Qwen2-Audio's, n_mels=128): every clip padded to Whisper's 30 s window, Slaney filters.
    features: str = "megaomni"
    # Positions inside each clip: rotary (rope), or a fixed table of max_positions rows added after
    # the stem (sinusoidal: Whisper's; a buffer, never trained, loaded from a checkpoint as it is).
    position_embedding: str = "rope"  # rope | sinusoidal
    max_positions: int = 1500  # sinusoidal: the table's rows, the most transformer rows of a clip
    # Each group of downsample / stem_stride transformer rows becomes one LLM token. mlp: a clip's
    # rows zero-padded to whole groups (attention sees the zeros), the blocks' final norm, a group
    # concatenated, Linear-GELU-Linear. pool_linear (Qwen2-Audio): a clip's last incomplete group
    # dropped, a group averaged, then the norm (after pooling: the blocks have none), one Linear.
    projector: str = "mlp"  # mlp | pool_linear
    # Qwen2.5-Omni: a clip's own frames (a window's padding dropped) in chunks of chunk_frames, each
    # through the stem alone, with positions from 0 and attention inside it; pool_linear then pools
    # the clip's rows across its chunks. 0: a clip whole.
    chunk_frames: int = 0
    # Qwen2.5-Omni's 2 rows of audio start / end embeddings [2, LLM hidden]: its forward never
    # reads them, but its checkpoints hold them; kept as a buffer (never trained) for export.
    bos_eos_embedding: bool = False


# Config sections of modalities registered from outside the library (megaomni.media.register):
# name -> dataclass. ``model.<name>`` then reads and overrides like a built-in section.
_EXTRA_SECTIONS: dict[str, type] = {}


def register_section(name: str, cls: type) -> None:
    """Add (``cls``) or remove (None) the section ``model.<name>``."""
    if cls is None:
        _EXTRA_SECTIONS.pop(name, None)
    else:
        _EXTRA_SECTIONS[name] = cls


@dataclass
class ModelConfig:
    llm: LLMConfig = field(default_factory=LLMConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    # Parts kept at their initial (loaded) weights, by name: llm, llm.embedding, llm.decoder,
    # llm.output, and per enabled modality e.g. vision, vision.encoder, vision.projector
    # (megaomni/models/freeze.py says what each covers).
    freeze: list[str] = field(default_factory=list)
    # The registered modalities' sections (``_EXTRA_SECTIONS``), read as attributes: model.<name>.
    extra: dict = field(default_factory=lambda: {name: cls() for name, cls in _EXTRA_SECTIONS.items()},
                        metadata={"sections": _EXTRA_SECTIONS})

    def __getattr__(self, name: str):
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"ModelConfig has no section {name!r}")


@dataclass
class EncoderParallelConfig:
    tp: int = 1  # 1 (replicated over the LLM's TP ranks) or parallel.tp


@dataclass
class ParallelConfig:
    """Data parallelism is what remains of the world size: dp = world / (tp * pp * cp)."""

    tp: int = 1
    pp: int = 1
    vpp: int = 1  # virtual pipeline stages (model chunks) per pipeline rank
    cp: int = 1
    ep: int = 1  # expert parallelism, carved out of dp * cp
    sp: bool = False  # Megatron sequence parallelism (needs tp > 1)
    distributed_optimizer: bool = False
    encoder: EncoderParallelConfig = field(default_factory=EncoderParallelConfig)

    def data_parallel_size(self, world_size: int) -> int:
        return world_size // (self.tp * self.pp * self.cp)

    def min_micro_batches(self) -> int:
        """Micro-batches each data-parallel rank needs a step: the interleaved schedule needs pp."""
        return self.pp if self.vpp > 1 else 1

    def sequence_multiple(self) -> int:
        """What every LLM sequence length must be a multiple of: context parallelism cuts it into
        2*cp load-balanced chunks, sequence parallelism splits each chunk over the TP ranks."""
        return 2 * self.cp * (self.tp if self.sp else 1) if self.cp > 1 else (self.tp if self.sp else 1)


@dataclass
class PipelineConfig:
    # LLM layers of each pipeline stage, in stage order (pp * vpp entries; virtual stage v of
    # rank r is entry v * pp + r). Empty: split automatically, encoders counted on stage 0.
    layers_per_stage: list[int] = field(default_factory=list)
    # megatron: encoders on the first stage, megatron-core's 1F1B / interleaved schedule (the
    # baseline). joint: every pipeline rank encodes a share of each micro-batch in the LLM
    # schedule's bubbles (megaomni/pipeline/joint_plan.py).
    schedule: str = "megatron"
    # auto: megatron-core's schedules for `megatron`, megaomni's plan executor for `joint`.
    # plan: megaomni's executor for both (the baseline's timeline can then be recorded).
    executor: str = "auto"
    # joint: keep the baseline's placement (encoders on stage 0) on a step where the simulator
    # finds it faster, e.g. one huge image that cannot be shared. false: always share.
    joint_fallback: bool = True
    # joint: micro-batches an encoder call may cover (a rank's shares of them encoded together:
    # the host launches the encoder's layers once for all). 0: the planner tries 1 to 3 each
    # step and keeps the fastest by simulation (larger calls hold more encoder activations).
    encoder_group: int = 0
    # megaomni's executor on a GPU, from the second step: CUDA's sync debug mode ("warn" or
    # "error") around each step's actions. A host sync there stops the rank's host until its
    # GPU catches up, so it cannot queue the next actions: a debugging aid, off ("") by default.
    sync_debug: str = ""
    # joint: the profiling pass. Steps 2..N+1 are timed per action (CUDA events) and the costs
    # the planner simulates with are fitted to them (per kind, seconds per FLOP above a floor per
    # model call: the host's time to launch it); until then, and with 0, the FLOP model's defaults.
    profile_steps: int = 3
    # Every N-th iteration, write timelines/iter_N.json (the step's micro-batch sizes, and under
    # the plan executor what each rank ran when) and a PNG of it. 0: never.
    timeline_interval: int = 0


@dataclass
class DataConfig:
    # A directory of *.tar shards, or several blended by weight: comma-separated DIR:WEIGHT
    # entries ("/d/a:0.7,/d/b:0.3"; a missing weight is 1). The weight follows an entry's last
    # colon; weights are relative (they need not sum to 1).
    path: str = ""
    # A sentencepiece .model file, or a Hugging Face model folder holding tokenizer.json. "": the
    # (first) data.path directory's tokenizer.model, else that directory where it holds tokenizer.json.
    tokenizer: str = ""
    seq_length: int = 256  # the longest sample, in LLM tokens
    # Packing: each micro-batch is one row of samples back to back (attention inside each), up to
    # max_tokens LLM tokens (0: seq_length), max_patches image patches and max_audio_frames
    # log-mel frames (0: no limit); micro_batch_size is then unused. false: micro_batch_size
    # samples per micro-batch, right-padded.
    packing: bool = True
    max_tokens: int = 0
    max_patches: int = 0
    max_audio_frames: int = 0
    micro_batch_size: int = 8
    global_batch_size: int = 16  # samples per step
    # Dynamic batches (packing only): a step takes samples until this many LLM tokens, so the
    # number of samples and micro-batches per step varies. 0: global_batch_size samples.
    global_batch_tokens: int = 0
    # Packed steps have a multiple of this many micro-batches (the fullest are halved to get
    # there). Expert parallelism over data-parallel ranks needs a multiple of the data-parallel
    # size: its all-to-alls make every rank run the same number of micro-batches. Keep it fixed
    # across layouts to train on the same micro-batches under each.
    micro_batch_multiple: int = 1
    # The length packed rows are padded to (rounded up to 8, and to what SP / CP split evenly):
    # step (the step's longest row: one activation shape, which pipeline stages exchange) | row
    # (each row its own: no attention or MLP over padding) | auto (row without pipelining). An
    # MoE router leaves the padding out of its balancing either way (megatron-core's padding_mask).
    row_padding: str = "auto"
    decoder: str = "auto"  # images: pillow | dali (NVIDIA DALI, same pixels) | auto (DALI when importable)
    min_pixels: int = 28 * 28
    max_pixels: int = 112 * 112
    max_audio_seconds: float = 4.0
    # Frames kept of a video (0: all): more are subsampled uniformly, the same frames every time.
    max_video_frames: int = 0
    # The frame rate of a video's frames as kept (shards carry no timestamps; Qwen2.5-VL's processor
    # samples at 2 fps). Read only where model.vision.tokens_per_second spaces time.
    video_fps: float = 2.0
    # A <video> placeholder right before an <audio> one (nothing between) is that video with its
    # audio track, interleaved by time (Qwen2.5-Omni's use_audio_in_video; megaomni/data/audio_in_video.py).
    audio_in_video: bool = False
    zero_media: bool = False  # feed all-zero pixels/features: the "text only" control
    # A sample over seq_length tokens is cut to seq_length (counted as truncated) instead of
    # skipped (too_long); still skipped where the cut would split a media placeholder run (half
    # an image is a wrong sample) or leave no answer token to learn from.
    truncate: bool = False
    seed: int = 1234
    # Processes (forked, like PyTorch's DataLoader workers) that index shards and decode each
    # step's micro-batches; 0: in the training process. Same samples and steps either way.
    workers: int = 0
    # Make the next step's micro-batches in a background thread while this one trains (in
    # pinned memory on CUDA). Same steps and checkpointed position either way.
    prefetch: bool = True
    # With workers: steps whose micro-batches the workers decode ahead of the one training.
    prefetch_steps: int = 2
    # Each data set's sample index (megaomni/data/index.py): auto builds a missing or stale one
    # (written into the data set's folder, or index_dir), require makes that an error (a corpus
    # is indexed once, by tools/index_data.py). index_dir: "" keeps indexes in each data set.
    index: str = "auto"
    index_dir: str = ""

    def datasets(self) -> list[tuple[str, float]]:
        """``path`` as (directory, weight) entries; [] when it is empty."""
        if not self.path:
            return []
        entries = []
        for entry in self.path.split(","):
            directory, value = entry.strip(), 1.0
            head, colon, weight = directory.rpartition(":")
            if colon:
                try:
                    directory, value = head, float(weight)
                except ValueError:  # not a weight: a colon of the directory name itself
                    pass
            if not directory:
                raise ConfigError(f"data.path={self.path}: an entry without a directory ({entry!r})")
            if not 0 < value < float("inf"):
                raise ConfigError(f"data.path={self.path}: weight {weight} of {directory} must be a positive number")
            entries.append((directory, value))
        return entries

    def tokenizer_path(self) -> str:
        if self.tokenizer:
            return self.tokenizer
        first = self.datasets()[0][0] if self.path else ""
        model = os.path.join(first, "tokenizer.model")
        # A Hugging Face tokenizer (tools/prepare_data.py --tokenizer copies one in) is read from its folder.
        hf = not os.path.exists(model) and os.path.isfile(os.path.join(first, "tokenizer.json"))
        return first if hf else model


# megatron-core's names of what selective recomputation can recompute (train.recompute_modules).
RECOMPUTE_MODULES = ("core_attn", "mlp", "layernorm", "moe", "shared_experts")


@dataclass
class TrainConfig:
    iters: int = 200
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_iters: int = 10
    weight_decay: float = 0.0
    clip_grad: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    seed: int = 1234
    bf16: bool = False
    device: str = "auto"  # auto | cpu | cuda
    # Activation recomputation (megatron-core's): none | selective (each layer's
    # recompute_modules: core_attn, mlp, layernorm, moe, shared_experts) | full (each layer keeps
    # its input and runs again in backward). recompute_parts: the stacks it applies to (llm and
    # the modalities' names); []: all.
    recompute: str = "none"
    recompute_modules: list[str] = field(default_factory=lambda: ["core_attn"])
    recompute_parts: list[str] = field(default_factory=list)
    # Kernels (none changes a weight; a resume may change them). cross_entropy: megatron (its
    # vocab-parallel loss over the whole fp32 logits; auto on the CPU or at tp > 1) | torch
    # (torch's log-softmax + NLL over them; auto on one GPU rank) | chunked (the output layer and
    # loss chunk by chunk, no full logits; less memory, a little slower); torch and chunked:
    # megaomni/ops/cross_entropy.py, one tensor-parallel rank. fusion: compile (elementwise
    # chains compiled by torch.compile: megaomni/ops/kernels.py) | layers (those and every
    # transformer layer compiled whole; auto on a GPU for a dense LLM at tp = cp = 1, else the
    # chains alone) | none (auto on the CPU). encoder_attention: varlen (flash varlen over the
    # packed segments; auto) | dense (each length's images or clips one dense SDPA call, cuDNN's
    # kernel first: for fixed sizes, CLIP's or SigLIP's; each new size costs cuDNN a new plan).
    cross_entropy: str = "auto"
    fusion: str = "auto"
    encoder_attention: str = "auto"
    # The GPU's dense bf16 peak, TFLOP/s, for MFU; 0: by the device's name (H100/H200 SXM: 989).
    peak_tflops: float = 0.0
    output_dir: str = "runs/tiny_omni"
    # An output_dir holding an earlier run (metrics.jsonl, checkpoints), or a checkpoint.save root
    # holding checkpoints, is refused unless checkpoint.load resumes from it; true: write over it
    # (same-numbered checkpoints replaced, `latest` moved; its metrics lines kept aside).
    overwrite: bool = False
    # SIGTERM / SIGINT stop the run at the end of the step and save a checkpoint, unless the time
    # since the signal plus the last save's duration exceeds this (then it exits unsaved). 0: always save.
    exit_grace_s: float = 0.0
    # Stop (exit 3) after this many consecutive iterations of a collapsed model: grad norm 0, or
    # (after warm-up) the loss at ln(vocab), the uniform guess. 0: never.
    collapse_steps: int = 20
    # Stop (exit 3) at a loss above this many times the mean of the previous 20 iterations'. 0: never.
    spike_factor: float = 0.0
    # A step phase (data, forward_backward, optimizer, metrics, save) running longer than this many
    # seconds ends every live rank with exit 5, naming the phase (megaomni/training/watchdog.py);
    # the process groups' collective timeout becomes twice it (start-up's waits too). 0: off.
    step_timeout_s: float = 0.0


@dataclass
class CheckpointConfig:
    save: str = ""  # "": <train.output_dir>/checkpoints
    save_interval: int = 0  # 0: save only at the end
    save_last: bool = True  # false: no checkpoint at the last iteration (benchmarks)
    keep_last: int = 0  # after each save, remove all but the newest N whole checkpoints; 0: keep all
    # Write checkpoints in a background process while training goes on (megaomni/training/async_saves.py);
    # `latest` moves once every rank has finished writing. The last iteration's save is synchronous.
    async_save: bool = False
    load: str = ""  # a checkpoint directory (or its parent holding `latest`)
    # Load the weights alone: a new optimizer, LR schedule and data position, from iteration 0, under
    # any model.freeze (a next training stage, e.g. LLaVA's stage 2 from its stage 1).
    finetune: bool = False
    # A resume whose model (parameters) or data settings differ from the checkpoint's is an error;
    # false: the weights that fit load, the log lists those not loaded and those left at their
    # initial values (megaomni/checkpoint/changes.py says which fields count).
    strict: bool = True
    # Changed optimizer / LR schedule settings (train.lr, min_lr, warmup_iters, iters, ...) apply on
    # resume, from the saved step; false: the checkpoint's continue, the changes logged as ignored.
    reset_schedule: bool = False


@dataclass
class EvalConfig:
    # Held-out sets, each evaluated and reported on its own: comma-separated directories in
    # data.path's formats (*.tar shards, an Energon dataset), each DIR or NAME=DIR (NAME: the
    # directory's name).
    path: str = ""
    interval: int = 0  # evaluate every this many iterations and at the last; 0: never
    # Steps per set, shaped as training's (data.global_batch_size / global_batch_tokens), always
    # from the set's start, so every evaluation reads the same samples.
    iters: int = 10

    def sets(self) -> list[tuple[str, str]]:
        """``path`` as (name, directory) entries; [] when it is empty."""
        entries = []
        for entry in filter(None, (e.strip() for e in self.path.split(","))):
            name, equals, directory = entry.partition("=")
            if not equals:
                name, directory = os.path.basename(os.path.normpath(entry)), entry
            entries.append((name.strip(), directory.strip()))
        return entries


@dataclass
class LoggingConfig:
    log_interval: int = 1
    # Dashboards fed with every numeric field of metrics.jsonl (megaomni/training/dashboards.py);
    # optional packages, needed only when set.
    tensorboard: str = ""  # a directory for TensorBoard event files (pip install tensorboard); empty: none
    wandb_project: str = ""  # a Weights & Biases project to log to (pip install wandb); empty: none
    wandb_mode: str = "online"  # online, offline (synced later with `wandb sync`) or disabled
    wandb_name: str = ""  # the W&B run's name; empty: W&B picks one
    # torch.profiler over iterations profile_start .. profile_start + profile_steps - 1 (0: off):
    # a Chrome trace and a table of the top kernels per rank in <train.output_dir>/profile/
    # (megaomni/training/profiler.py).
    profile_start: int = 0
    profile_steps: int = 1


@dataclass
class OmniConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict:
        """As a YAML file writes it: registered sections beside the built-in ones."""
        tree = dataclasses.asdict(self)
        tree["model"].update(tree["model"].pop("extra"))
        return tree


# ----------------------------------------------------------------------------- loading


def _field_types(cls) -> dict[str, Any]:
    """Field name -> type, with a field of registered sections (``metadata["sections"]``) as
    those sections: they are written at the level of the field, not under its name."""
    hints = typing.get_type_hints(cls)
    types_ = {}
    for f in dataclasses.fields(cls):
        types_.update(f.metadata["sections"] if "sections" in f.metadata else {f.name: hints[f.name]})
    return types_


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check ``value`` against the annotation ``typ``; ints are accepted for floats."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        typ = args[0]
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif typing.get_origin(typ) is list:
        (item,) = typing.get_args(typ)
        if isinstance(value, (list, tuple)):
            return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
        typ = list
    else:
        raise ConfigError(f"{key}: unsupported field type {typ}")
    raise ConfigError(f"{key}={value!r}: expected {getattr(typ, '__name__', typ)}, got {type(value).__name__}")


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in types_:
            raise ConfigError(f"{name}: unknown key (valid: {', '.join(types_)})")
        typ = types_[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = _build(typ, value, name + ".")
        else:
            kwargs[key] = _coerce(name, value, typ)
    obj = cls(**{k: v for k, v in kwargs.items() if k in {f.name for f in dataclasses.fields(cls)}})
    for f in dataclasses.fields(cls):
        if "sections" in f.metadata:
            getattr(obj, f.name).update({k: v for k, v in kwargs.items() if k in f.metadata["sections"]})
    return obj


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {p} is a value, not a section")
    node[parts[-1]] = value


def config_from_dict(tree: dict, overrides: tuple[str, ...] | list[str] = ()) -> OmniConfig:
    """An OmniConfig from a mapping (``OmniConfig.to_dict``'s, a checkpoint's) and overrides."""
    tree = copy.deepcopy(tree)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item}: overrides are KEY=VALUE, e.g. train.iters=20")
        key, raw = item.split("=", 1)
        # YAML parsing gives ints, floats, bools and strings the same way the file does.
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw != "" else "")
    return _build(OmniConfig, tree, "")


def _read_yaml(path: str, seen: tuple[str, ...] = ()) -> dict:
    """A recipe's tree; ``base: OTHER.yaml`` (relative to the file) is read first and the file's
    sections are written over it, key by key (a next training stage changes a few fields)."""
    if not os.path.isfile(path):
        raise ConfigError(f"--config {path}: no such file")
    if os.path.abspath(path) in seen:
        raise ConfigError(f"--config {seen[0]}: its base chain returns to {path}")
    with open(path) as f:
        tree = yaml.safe_load(f) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"--config {path}: not a mapping of sections")
    base = tree.pop("base", None)
    if not base:
        return tree
    return merge_trees(_read_yaml(os.path.join(os.path.dirname(path), base), (*seen, os.path.abspath(path))), tree)


def merge_trees(base: dict, tree: dict) -> dict:
    """``tree`` written over ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in tree.items():
        out[key] = merge_trees(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
            else value
    return out


def load_config(path: Optional[str] = None, overrides: tuple[str, ...] | list[str] = ()) -> OmniConfig:
    """YAML file (optional, with its ``base``) + ``KEY=VALUE`` overrides -> validated-by-type OmniConfig."""
    return config_from_dict(_read_yaml(path) if path else {}, overrides)


def describe_fields(cls=OmniConfig, prefix: str = "") -> list[str]:
    """Lines ``key = default  (type)`` for ``--help``."""
    lines = []
    default = cls()
    for name, typ in _field_types(cls).items():
        value = getattr(default, name)
        if dataclasses.is_dataclass(value):
            lines += describe_fields(type(value), f"{prefix}{name}.")
        else:
            lines.append(f"  {prefix}{name} = {value!r}  ({getattr(typ, '__name__', typ)})")
    return lines
