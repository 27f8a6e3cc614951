"""Evaluation during training (``eval.*``): its validation; the forward-only loss against the model
run directly, training's state untouched; and ``pretrain_omni.py`` runs: the eval records equal
under one process and 2-rank layouts (DP2, TP2, CP2, PP2 under the joint schedule; MoE under EP2), and a run with
evaluation trains exactly as one without.

In process: the tiny model and hand-made micro-batches of ``tests/training/steps.py`` on one gloo
rank. The runs: ``tests/parallel``'s harness (shared initial weights), ``slow``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from megaomni.config import ConfigError, load_config
from megaomni.validation import check_eval
from tests.conftest import ROOT
from tests.parallel.layouts import DENSE, MOE, Model, ParitySetup
from tests.training import steps

# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("overrides, message", [
    (("eval.interval=5",), "eval.interval=5: needs eval.path"),
    (("eval.interval=-1",), "eval.interval=-1: must be >= 0"),
    (("eval.interval=5", "eval.path=/nonexistent/held"), "eval.path=/nonexistent/held: no such directory"),
    (("eval.interval=5", "eval.path=/a/held,/b/held"), "each set needs a directory and a name of its own"),
    (("eval.interval=5", "eval.path=x=/a", "eval.iters=0"), "eval.iters=0: must be >= 1"),
])
def test_bad_eval_settings_fail_with_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        check_eval(load_config(None, overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_eval_sets_are_named_by_folder_or_name():
    cfg = load_config(None, ["eval.path=/d/held, val=/d/other/"])
    assert cfg.eval.sets() == [("held", "/d/held"), ("val", "/d/other/")]


def test_a_resume_sets_aside_the_eval_lines_past_its_checkpoint(tmp_path):
    from megaomni.training.metrics import set_aside_past

    lines = [{"iteration": 1, "loss": 5.0}, {"iteration": 2, "loss": 4.0}, {"iteration": 2, "eval": {"a": {}}},
             {"iteration": 3, "loss": 3.0}, {"iteration": 3, "eval": {"a": {}}}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    aside = set_aside_past(str(path), 2)
    assert [json.loads(line) for line in path.read_text().splitlines()] == lines[:3]
    assert [json.loads(line) for line in open(aside)] == lines[3:]


# ----------------------------------------------------------------------------- in process


def test_eval_loss_is_the_models_forward_loss_and_leaves_training_alone(megatron_cpu):
    from megaomni.training.evaluate import evaluate_steps, evaluation_mode
    from megaomni.training.schedule import StepRunner
    from megaomni.training.step import make_forward_step

    cfg, state = steps.small_state()
    eval_steps = [[steps.micro_batch(cfg, seed) for seed in (1, 2)], [steps.micro_batch(cfg, 3, ("vision",))]]
    pad_id = 7  # counted as padding: the token count must leave it out
    weights = {n: p.detach().clone() for n, p in steps.params(state).items()}
    rng = torch.get_rng_state()
    with evaluation_mode(state.ddp):
        got = evaluate_steps(StepRunner(cfg, state, steps.CPU, steps.VOCAB), make_forward_step(steps.CPU),
                             eval_steps, pad_id, steps.CPU)

    # Reference: the model itself, in eval mode, over the same samples; sums over all of them.
    model, loss_sum, loss_tokens = state.chunks[0], 0.0, 0.0
    model.eval()
    with torch.no_grad():
        for batch in (b for step in eval_steps for b in step):
            per_token = model(batch.tokens, batch.position_ids, labels=batch.labels, media=batch.media)
            loss_sum += float((per_token.double() * batch.loss_mask).sum())
            loss_tokens += float(batch.loss_mask.sum())
    model.train()
    batches = [b for step in eval_steps for b in step]
    # Relative 1e-6: each micro-batch's loss is summed in float32 (step.loss_func), the reference in float64.
    assert got["loss"] == pytest.approx(loss_sum / loss_tokens, rel=1e-6)
    assert got["answer_nll"] == pytest.approx(loss_sum / len(batches), rel=1e-6)
    assert got["loss_tokens"] == loss_tokens
    assert got["tokens"] == sum(int((b.tokens != pad_id).sum()) for b in batches)
    # Training's state as it was: weights, no gradient, train mode, the RNG.
    for name, p in steps.params(state).items():
        assert torch.equal(p, weights[name]), name
        assert p.main_grad is None or not p.main_grad.any(), name
    assert all(m.training for ddp in state.ddp for m in ddp.modules())
    assert torch.equal(torch.get_rng_state(), rng)


# ----------------------------------------------------------------------------- runs

EVAL = ("eval.interval=2", "eval.iters=2")  # evaluations at iterations 2 and 3 (the last) of COMMON's 3


@pytest.fixture(scope="module")
def parity(toy_data, tmp_path_factory) -> ParitySetup:
    return ParitySetup(toy_data, tmp_path_factory.mktemp("eval_parity"))


@pytest.fixture(scope="module")
def other_set(tmp_path_factory) -> str:
    """A small data set besides the training data."""
    other = tmp_path_factory.mktemp("other")
    subprocess.run([sys.executable, "tools/make_toy_data.py", "--out", str(other), "--samples", "64", "--seed", "1"],
                   check=True, cwd=ROOT, timeout=300)
    return str(other)


@pytest.fixture(scope="module")
def eval_sets(toy_data, other_set) -> str:
    return f"eval.path=train={toy_data},other={other_set}"


def test_a_run_that_requires_indexes_checks_the_eval_sets_too(toy_data, other_set, tmp_path):
    from megaomni.data.loader import OmniDataLoader
    from megaomni.data.tokenizer import load_tokenizer
    from megaomni.validation import check_data

    cfg = load_config(None, [f"data.path={toy_data}", f"data.index_dir={tmp_path}", "train.device=cpu"])
    tokenizer = load_tokenizer(cfg.data.tokenizer_path())
    OmniDataLoader(cfg, tokenizer, dp_rank=0, dp_size=1).close()  # builds the training set's index alone
    cfg.data.index, cfg.eval.path, cfg.eval.interval = "require", f"held={other_set}", 5
    with pytest.raises(ConfigError, match=rf"^eval.path={other_set}: no index for these settings"):
        check_data(cfg)
    cfg.eval.interval = 0  # off: its sets are not read
    check_data(cfg)


@pytest.fixture(scope="module")
def one_process(parity, eval_sets, tmp_path_factory):
    """A model's single-process run with evaluation (made once per model)."""
    runs: dict[str, list[dict]] = {}

    def run(model: Model) -> list[dict]:
        if model.name not in runs:
            out = tmp_path_factory.mktemp(f"eval_{model.name}") / "run"
            runs[model.name] = parity.run(model, out, eval_sets, *EVAL)
        return runs[model.name]

    return run


def _split(records: list[dict]) -> tuple[list[dict], list[dict]]:
    return [r for r in records if "eval" not in r], [r for r in records if "eval" in r]


@pytest.mark.slow
def test_a_run_with_evaluation_trains_exactly_as_one_without(parity, one_process):
    trained, evals = _split(one_process(DENSE))
    reference = parity.reference(DENSE)
    assert [(r["loss"], r["grad_norm"]) for r in trained] == [(r["loss"], r["grad_norm"]) for r in reference]
    assert [r["iteration"] for r in evals] == [2, 3]
    # Each evaluation reads the same samples; the weights moved between them.
    first, last = (r["eval"] for r in evals)
    assert set(first) == {"train", "other"}
    for name in first:
        assert (first[name]["tokens"], first[name]["loss_tokens"]) == (last[name]["tokens"], last[name]["loss_tokens"])
        assert first[name]["loss"] != last[name]["loss"]


@pytest.mark.slow
# Weights split (TP), the plan executor's forward-only plan (joint PP), expert all-to-alls (EP); DP2
# and CP2 (eval equal there too when measured) left out for CI time.
@pytest.mark.parametrize("model, overrides", [
    pytest.param(DENSE, ("parallel.tp=2",), id="dense-tp2"),
    pytest.param(DENSE, ("parallel.pp=2", "pipeline.schedule=joint", "pipeline.joint_fallback=false"),
                 id="dense-pp2_joint"),
    pytest.param(MOE, ("parallel.ep=2",), id="moe-ep2"),
])
def test_eval_loss_is_equal_across_layouts(parity, eval_sets, one_process, model, overrides, tmp_path):
    _, expected = _split(one_process(model))
    _, evals = _split(parity.run(model, tmp_path / "run", eval_sets, *EVAL, *overrides, nproc=2))
    assert [r["iteration"] for r in evals] == [r["iteration"] for r in expected]
    for a, b in zip(expected, evals):
        for name, stats in a["eval"].items():
            got = b["eval"][name]
            assert (got["tokens"], got["loss_tokens"]) == (stats["tokens"], stats["loss_tokens"]), name
            for key in ("loss", "answer_nll"):
                assert got[key] == pytest.approx(stats[key], rel=1e-5), (name, key, stats, got)
