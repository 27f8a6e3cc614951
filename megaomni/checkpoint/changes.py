"""What a resumed run may change from the config its checkpoint was saved with.

- **Parameters** (``model.*`` but the fields below that change no weight; the padded vocabulary,
  which the tokenizer sets) and **data** (``data.*`` but how samples are decoded): an error listing
  the fields, unless ``checkpoint.strict=false`` (the weights that fit load, the log lists the rest).
  Weights alone (``checkpoint.finetune``, a weights-only checkpoint) check the parameters only.
- **Optimizer and LR schedule** (:data:`SCHEDULE`): the checkpoint's continue and the changes are
  named as ignored, unless ``checkpoint.reset_schedule=true`` applies them (from the saved step).
- Anything else may change: the layout (``parallel.*``, ``pipeline.*``: checkpoints reshard),
  logging, output and checkpoint settings. ``model.freeze`` has its own rule (megaomni.validation).
"""

from __future__ import annotations

import copy
import logging

from megaomni.config import ConfigError, OmniConfig

log = logging.getLogger("megaomni.checkpoint")

# model.* fields that change no parameter's name or shape: how inputs are prepared, positions,
# routing, norms' epsilon. (A registered modality's fields all count as parameter fields.)
NO_PARAMETERS = {
    *(f"model.llm.{f}" for f in ("max_seq_len", "rotary_base", "norm_eps", "init_std", "mrope_section")),
    *(f"model.llm.moe.{f}" for f in ("top_k", "aux_loss_coeff", "bias_update_rate", "token_dispatcher",
                                     "normalize_top_k", "grouped_gemm")),
    *(f"model.vision.{f}" for f in ("rotary_base", "norm_eps", "resize", "resample", "image_mean", "image_std",
                                    "window_size", "full_attention_layers", "tokens_per_second", "seconds_first",
                                    "seconds_per_chunk", "keep_class_token", "feature_layer")),
    *(f"model.audio.{f}" for f in ("sample_rate", "n_fft", "hop_length", "rotary_base", "norm_eps", "features",
                                   "chunk_frames")),
    "model.freeze",
}
# data.* fields that change neither which samples are read nor their order or tokens.
NO_DATA = {f"data.{f}" for f in ("decoder", "workers", "prefetch", "prefetch_steps", "index", "index_dir")}
SCHEDULE = tuple(f"train.{f}" for f in ("lr", "min_lr", "warmup_iters", "iters", "weight_decay", "clip_grad",
                                        "adam_beta1", "adam_beta2", "adam_eps"))
VOCAB = "vocab"  # the padded vocabulary: the embedding's and output layer's rows


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def changes(saved: dict, now: dict) -> dict[str, tuple]:
    """Dotted field -> (saved, now), for the fields both configs have that differ."""
    old, new = _flat(saved), _flat(now)
    return {key: (old[key], new[key]) for key in new if key in old and old[key] != new[key]}


def listed(found: dict[str, tuple]) -> str:
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in found.items())


def parameter_changes(found: dict[str, tuple]) -> dict[str, tuple]:
    return {k: v for k, v in found.items() if k.startswith("model.") and k not in NO_PARAMETERS or k == VOCAB}


def data_changes(found: dict[str, tuple]) -> dict[str, tuple]:
    return {k: v for k, v in found.items() if k.startswith("data.") and k not in NO_DATA}


def check_resumed_config(cfg: OmniConfig, common: dict, vocab: tuple[int, int]) -> None:
    """Raises ConfigError (one line) where the run changes the checkpoint's parameters or data,
    unless ``checkpoint.strict=false``. ``vocab``: (the checkpoint's, this run's) padded vocabulary."""
    if not cfg.checkpoint.strict:
        return
    found = changes(common["config"], cfg.to_dict())
    if vocab[0] != vocab[1]:
        found[VOCAB] = vocab
    weights_only = common.get("weights_only") or cfg.checkpoint.finetune
    problems = [(what, picked) for what, picked in (("parameters", parameter_changes(found)),
                                                    ("data", {} if weights_only else data_changes(found))) if picked]
    if problems:
        raise ConfigError(f"checkpoint.load={cfg.checkpoint.load}: this run changes the checkpoint's "
                          + "; its ".join(f"{what}: {listed(picked)}" for what, picked in problems)
                          + "; resume with the saved settings, or set checkpoint.strict=false to load what fits "
                          "(the log lists the rest)")


def resumed_config(cfg: OmniConfig, common: dict) -> OmniConfig:
    """The config a full resume builds its optimizer and schedule from: the checkpoint's
    :data:`SCHEDULE` settings where they changed (named in one warning), this run's with
    ``checkpoint.reset_schedule`` (the run's length, ``train.iters``, is always this run's)."""
    if common.get("weights_only") or cfg.checkpoint.finetune:
        return cfg
    found = {k: v for k, v in changes(common["config"], cfg.to_dict()).items() if k in SCHEDULE}
    if not found:
        return cfg
    if cfg.checkpoint.reset_schedule:
        log.info("checkpoint.reset_schedule=true: the optimizer and LR schedule go on from the saved step with %s",
                 listed(found))
        return cfg
    log.warning("resuming the checkpoint's optimizer and LR schedule; ignored (checkpoint.reset_schedule=true "
                "applies them): %s%s", listed(found), " (the run still ends at train.iters, the schedule keeps the "
                "checkpoint's length)" if "train.iters" in found else "")
    resumed = copy.deepcopy(cfg)
    for key, (old, _) in found.items():
        if key != "train.iters":
            setattr(resumed.train, key.split(".")[1], old)
    return resumed


def keeps_data_position(cfg: OmniConfig, common: dict) -> bool:
    """Whether the saved data position applies: not where ``checkpoint.strict=false`` let the data
    settings change (the data then starts afresh, logged)."""
    found = data_changes(changes(common["config"], cfg.to_dict()))
    if found:
        log.warning("checkpoint.strict=false: the data starts afresh (data settings changed: %s)", listed(found))
    return not found
