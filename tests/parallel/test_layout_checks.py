"""The layout checks of the parity harness (layout_checks.py) reject runs whose layout did not take
effect: probes shaped as probe.py writes them, for a 2-layer model with an encoder, one process
against TP2 and PP2 runs, right and wrong."""

from __future__ import annotations

import copy

import pytest

from tests.parallel.layout_checks import Layout, assert_layout_took_effect

LAYER = {"split": 400, "other": 20}
REFERENCE = {"groups": {k: {"size": 1, "rank": 0} for k in ("tp", "pp", "cp", "dp", "ep", "etp")},
             "chunks": [[1, 2]], "encoder_calls": {"vision": 3},
             "params": {"1": LAYER, "2": LAYER, "llm.embedding.word_embeddings.weight": {"split": 1000},
                        "llm.output_layer.weight": {"split": 1000}, "vision": {"split": 300, "other": 10}}}


def _rank(tp: tuple[int, int], pp: tuple[int, int], chunks, params, calls) -> dict:
    sizes = {"tp": tp, "pp": pp, "cp": (1, 0), "dp": (1, 0), "ep": (1, 0), "etp": (tp[0], tp[1])}
    return {"groups": {k: {"size": s, "rank": r} for k, (s, r) in sizes.items()}, "chunks": chunks,
            "encoder_calls": calls, "params": params}


def _tp2(split: int = 2) -> list[dict]:
    params = {"1": {"split": 400 // split, "other": 20}, "2": {"split": 400 // split, "other": 20},
              "llm.embedding.word_embeddings.weight": {"split": 1000 // split},
              "llm.output_layer.weight": {"split": 1000 // split}, "vision": {"other": 310}}
    return [_rank((2, r), (1, 0), [[1, 2]], params, {"vision": 3}) for r in range(2)]


def _pp2(stage1_encodes: bool = False, stage1_layers=(2,)) -> list[dict]:
    first = {"1": LAYER, "llm.embedding.word_embeddings.weight": {"split": 1000},
             "vision": REFERENCE["params"]["vision"]}
    second = {**{str(n): LAYER for n in stage1_layers}, "llm.output_layer.weight": {"split": 1000}}
    return [_rank((1, 0), (2, 0), [[1]], first, {"vision": 3}),
            _rank((1, 0), (2, 1), [list(stage1_layers)], second, {"vision": 3} if stage1_encodes else {})]


def test_layouts_that_took_effect_pass():
    assert_layout_took_effect([REFERENCE], _tp2(), Layout.requested(("parallel.tp=2",), 2))
    assert_layout_took_effect([REFERENCE], _pp2(), Layout.requested(("parallel.pp=2",), 2))
    joint = _pp2(stage1_encodes=True)
    joint[1]["params"]["vision"] = REFERENCE["params"]["vision"]
    assert_layout_took_effect([REFERENCE], joint, Layout.requested(("parallel.pp=2", "pipeline.schedule=joint"), 2))


@pytest.mark.parametrize("probes, overrides", [
    (_tp2(split=1), ("parallel.tp=2",)),  # each TP rank held the whole layers
    (_tp2(), ("parallel.pp=2",)),  # the groups are TP's, not PP's
    (_pp2(stage1_layers=(1, 2)), ("parallel.pp=2",)),  # a layer on both stages
    (_pp2(stage1_encodes=True), ("parallel.pp=2",)),  # stage 1 encoded under megatron-core's schedule
    (_pp2(), ("parallel.pp=2", "pipeline.schedule=joint")),  # stage 1 did not encode under joint
], ids=["tp_unsplit", "wrong_groups", "layer_twice", "encoded_on_stage1", "joint_stage1_idle"])
def test_layouts_that_did_not_take_effect_fail(probes, overrides):
    with pytest.raises(AssertionError):
        assert_layout_took_effect([REFERENCE], copy.deepcopy(probes), Layout.requested(overrides, len(probes)))
