"""Cost model, rate fitting and the timeline record."""

from __future__ import annotations

import json
import math
import random

import pytest

from megaomni.flops import BACKWARD_RATIO, FlopModel
from megaomni.pipeline.costs import Rates, StepCosts, fit_rates
from megaomni.pipeline.megatron_plan import megatron_plan
from megaomni.pipeline.plan import ENC_B, ENC_F, LLM_B, LLM_F
from megaomni.pipeline.simulate import simulate
from megaomni.pipeline.timeline import COLOURS, Event, Timeline

from .helpers import ideal_rates, uniform_costs


def test_fit_rates_recovers_floor_and_rate():
    """Host-bound small actions (the floor) and GPU-bound large ones (the rate), with noise and
    one action in ten stalled to twice its time (as recorded GPU actions are now and then)."""
    rng = random.Random(0)
    truth = {LLM_F: (2.5e-15, 0.017), ENC_F: (4.8e-15, 0.040), ENC_B: (2.4e-15, 0.0)}
    samples = {kind: [(x, max(b, a * x) * rng.uniform(0.97, 1.03) * (2.0 if rng.random() < 0.1 else 1.0))
                      for x in (rng.uniform(1e10, 2e13) for _ in range(200))]
               for kind, (a, b) in truth.items()}
    base = Rates(bytes_per_s=12.5e9, latency=7e-6)
    fitted = fit_rates(samples, base)
    for kind, (a, b) in truth.items():
        assert math.isclose(fitted.per_flop[kind], a, rel_tol=0.05), kind
        assert math.isclose(fitted.floor[kind], b, rel_tol=0.05, abs_tol=2e-3), kind
    # kinds without samples and the link keep the base's values
    assert fitted.per_flop[LLM_B] == base.per_flop[LLM_B] and fitted.floor[LLM_B] == base.floor[LLM_B]
    assert (fitted.bytes_per_s, fitted.latency) == (12.5e9, 7e-6)


def test_fit_rates_of_one_flop_count_is_a_floor_or_a_ratio():
    fitted = fit_rates({LLM_F: [(2e9, 1e-3), (2e9, 3e-3)], LLM_B: [(0.0, 1e-3)]})
    assert 1e-3 <= fitted.seconds(LLM_F, 2e9) <= 3e-3  # every value between has the least absolute error
    assert fitted.per_flop[LLM_B] == Rates().per_flop[LLM_B]  # no FLOPs measured: nothing to fit


def test_flop_model():
    model = FlopModel(layer_params=(10, 20, 30), stage_layers=(2, 1), hidden=4, vocab=50,
                      encoder_params={"vision": 7.0, "audio": 3.0}, encoder_attention={"vision": 8.0, "audio": 2.0},
                      rows_per_input={"vision": 1.0, "audio": 0.5})
    seq = [3, 5]
    tokens, pairs = 8, 3 * 4 / 2 + 5 * 6 / 2
    first = 2 * (10 + 20) * tokens + 2 * 4 * 4 * pairs
    last = 2 * 30 * tokens + 4 * 4 * pairs + 2 * 4 * 50 * tokens
    assert model.llm_forward(seq) == pytest.approx([first, last], rel=1e-15)
    assert model.item_forward("vision", 6) == 2 * 7.0 * 6 + 8.0 * 36
    assert model.item_forward("audio", 6) == 2 * 3.0 * 3 + 2.0 * 9
    costs = StepCosts([[1.0, 2.0]], [[5.0, 7.0, 11.0]], [1.0], [[1.0, 1.0, 1.0]])
    assert costs.flops(LLM_B, 0, 1) == BACKWARD_RATIO * 2.0
    assert costs.flops(ENC_B, 0, share=(0, 2)) == BACKWARD_RATIO * 16.0


def sample_timeline() -> Timeline:
    pp, num_micro = 4, 6
    costs = uniform_costs(pp, 1, num_micro, 1.0, items=[[0.5, 0.7]] * num_micro)
    return simulate(megatron_plan(pp, 1, [2] * num_micro), costs, ideal_rates(latency=0.05, bytes_per_s=1e300))


def test_draw_writes_a_png(tmp_path):
    from PIL import Image

    timeline = sample_timeline()
    path = tmp_path / "step.png"
    timeline.draw(str(path), title="megatron", width=900, row=30)
    image = Image.open(path)
    assert image.format == "PNG"
    top, legend = 30, 28
    assert image.size == (900, top + timeline.pp * 30 + legend + 24)
    colours = {c for _, c in image.convert("RGB").getcolors(maxcolors=1 << 20)}
    assert len(colours) > 4  # not blank
    for kind in (LLM_F, LLM_B, ENC_F, ENC_B):
        assert COLOURS[kind] in colours
    # each rank's row is coloured for the fraction of the step it computed (a strip above the
    # micro-batch labels; the time axis spans x = 70 .. width - 20; +-2% for pixel rounding)
    for rank, busy in enumerate(timeline.busy()):
        y = top + rank * 30
        strip = image.convert("RGB").crop((70, y + 4, 880, y + 8))
        coloured = sum(n for n, c in strip.getcolors(maxcolors=1 << 20) if c in COLOURS.values())
        assert coloured / (strip.size[0] * strip.size[1]) == pytest.approx(busy / timeline.step_time, abs=0.02)


def test_draw_empty_timeline(tmp_path):
    from PIL import Image

    Timeline(2, [], 0.0).draw(str(tmp_path / "empty.png"))
    assert Image.open(tmp_path / "empty.png").size[0] == 1400


def test_round_trip():
    timeline = sample_timeline()
    data = json.loads(json.dumps(timeline.to_dict()))
    again = Timeline.from_dict(data)
    assert again == timeline
    assert again.summary() == timeline.summary()
    assert data["step_time_s"] == timeline.step_time and data["pp"] == timeline.pp
    assert data["idle_s"] == [timeline.step_time - b for b in timeline.busy()]


def test_busy_and_bubble():
    events = [Event(0, LLM_F, 0, 0, 0.0, 1.0), Event(1, LLM_F, 0, 1, 1.0, 2.0), Event(1, LLM_B, 0, 1, 2.0, 4.0),
              Event(0, LLM_B, 0, 0, 4.0, 6.0)]
    timeline = Timeline(2, events, 6.0)
    assert timeline.busy() == [3.0, 3.0]
    assert timeline.bubble == pytest.approx(0.5)
    assert Timeline(2, [], 0.0).bubble == 0.0


def test_flop_model_from_config_counts_audio_rows_after_the_stem():
    """An audio clip of n frames runs n/2 transformer rows (the stride-2 stem) through every
    encoder matmul: 2 * params * n/2 FLOPs, plus attention over (n/2)^2 pairs."""
    from megaomni.config import OmniConfig
    from megaomni.media.modality import EncoderFlops

    cfg = OmniConfig()
    model = FlopModel.from_config(cfg.model, 256)
    audio = cfg.model.audio
    rows = 500
    expected = (2 * EncoderFlops.transformer(audio, cfg.model.llm.hidden_size).params * rows
                + 4 * audio.num_layers * audio.hidden_size * rows * rows)
    assert model.item_forward("audio", 2 * rows) == pytest.approx(expected, rel=1e-12)


def test_encoder_call_pays_a_floor_per_modality_once_per_call():
    """One encoder action over two micro-batches' shares: FLOPs add up, and it makes one model
    call per modality among its items (not per micro-batch); the floor is paid per call."""
    costs = StepCosts([[1.0], [1.0]], [[5.0, 7.0], [11.0]], [1.0, 1.0], [[1.0, 1.0], [1.0]],
                      modalities=[["vision", "audio"], ["vision"]])
    assert costs.encoder_call(ENC_F, [(0, (0, 1)), (1, (0,))]) == (23.0, 2)
    assert costs.encoder_call(ENC_B, [(1, (0,))]) == (BACKWARD_RATIO * 11.0, 1)
    assert costs.encoder_call(ENC_F, [(0, ()), (1, ())]) == (0.0, 0)
    rates = Rates(per_flop={k: 1.0 for k in COLOURS}, floor={k: 10.0 for k in COLOURS})
    assert rates.seconds(ENC_F, 23.0, calls=2) == 23.0 and rates.seconds(ENC_F, 5.0, calls=2) == 20.0


def test_samples_of_a_grouped_call_are_per_model_call():
    """The profiling pass fits per model call: a recorded action of c calls counts as c calls
    of its FLOPs / c and seconds / c each (exact for max(c * floor, rate * FLOPs))."""
    from megaomni.pipeline.plan import Action, Plan
    from megaomni.pipeline.replay import action_samples

    costs = StepCosts([[1.0], [1.0]], [[5.0, 7.0], [11.0]], [1.0, 1.0], [[1.0, 1.0], [1.0]],
                      modalities=[["vision", "audio"], ["vision"]])
    call = Action(ENC_F, 0, call=(0, 1))
    plan = Plan("joint", 1, 1, 2, [[call]], shares=[[(0, 1)], [(0,)]])
    samples = action_samples(plan, costs, [Event(0, ENC_F, 0, -1, 0.0, 0.5, call=(0, 1))], {})
    assert samples == {ENC_F: [(23.0 / 2, 0.25)]}


def test_grouped_event_round_trip_and_label():
    timeline = Timeline(2, [Event(1, ENC_F, 1, -1, 0.0, 1.0, call=(1, 3)), Event(0, LLM_F, 0, 0, 0.0, 1.0)], 1.0)
    again = Timeline.from_dict(json.loads(json.dumps(timeline.to_dict())))
    assert again == timeline
    assert [e.label for e in again.events] == ["1+3", "0"]


def test_timeline_recorded_before_the_rename_loads():
    """Events written before ``Event.group`` became ``Event.call`` hold the key "group"."""
    timeline = Timeline(2, [Event(1, ENC_F, 1, -1, 0.0, 1.0, call=(1, 3)), Event(0, LLM_F, 0, 0, 0.0, 1.0)], 1.0)
    data = timeline.to_dict()
    for e in data["events"]:
        e["group"] = e.pop("call")
    assert Timeline.from_dict(json.loads(json.dumps(data))) == timeline
