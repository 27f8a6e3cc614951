"""A modality registered from outside the library (tests/depth/modality.py: depth maps) works
through every layer without an edit to megaomni: config section, validation, special tokens,
shards, measure / decode / collate, costs, pipeline shares, and training, where it equals one
process at PP2 under both schedules (fp32, 1e-5)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from megaomni.config import ConfigError, load_config
from megaomni.data.shards import iter_shard, list_shards
from megaomni.data.tokenizer import OmniTokenizer
from megaomni.flops import FlopModel
from megaomni.media import registry
from megaomni.pipeline.shares import assemble, media_items, share_inputs, share_outputs
from megaomni.validation import validate
from tests.conftest import TINY_CONFIG
from tests.depth.data import write_depth_data
from tests.depth.modality import DEPTH, DEPTH_MODALITY
from tests.parallel.layouts import DENSE, ParitySetup, assert_same_run

TRAIN = os.path.join(os.path.dirname(__file__), "train.py")
JOINT = ("pipeline.schedule=joint", "pipeline.joint_fallback=false", "pipeline.timeline_interval=1")


@pytest.fixture(scope="module")
def depth():
    registry.register(DEPTH_MODALITY)
    try:
        yield DEPTH_MODALITY
    finally:
        registry.unregister(DEPTH_MODALITY.name)


@pytest.fixture(scope="module")
def depth_data(depth, tmp_path_factory) -> str:
    return write_depth_data(str(tmp_path_factory.mktemp("depth")))


def depth_config(data: str, *overrides: str):
    return load_config(TINY_CONFIG, [f"data.path={data}", *overrides])


def test_config_section_comes_and_goes_with_the_modality(depth_data):
    cfg = depth_config(depth_data, "model.depth.hidden_size=64")
    assert cfg.model.depth.hidden_size == 64 and cfg.to_dict()["model"]["depth"]["hidden_size"] == 64
    with pytest.raises(ConfigError, match=r"model.depth.patch=0: must be a positive integer"):
        validate(depth_config(depth_data, "model.depth.patch=0"), 1)
    validate(cfg, 1)
    with pytest.raises(ValueError, match="exists already"):
        registry.register(DEPTH_MODALITY)


def test_unregistered_section_is_unknown(depth):
    registry.unregister(depth.name)
    try:
        assert [m.name for m in registry.modalities()] == ["vision", "audio"]
        with pytest.raises(ConfigError, match="model.depth: unknown key"):
            load_config(TINY_CONFIG, ["model.depth.hidden_size=64"])
        with pytest.raises(ValueError, match="was not registered"):
            registry.unregister(depth.name)
    finally:
        registry.register(depth)


def test_samples_measure_decode_and_collate(depth_data):
    from megaomni.data.collate import collate_packed
    from megaomni.data.sample import build_sample

    cfg = depth_config(depth_data)
    tokenizer = OmniTokenizer(os.path.join(depth_data, "tokenizer.model"))
    pad = tokenizer.media_pad_id("depth")
    assert tokenizer.token_id(DEPTH) is not None and pad != tokenizer.media_pad_id("vision")
    source = DEPTH_MODALITY.sources[0]
    samples = []
    for raw in iter_shard(list_shards(depth_data)[0]):
        sample = build_sample(raw, tokenizer, cfg)
        (item,) = sample.media["depth"]
        (measured,) = DEPTH_MODALITY.measure(source, raw.members[DEPTH], cfg)
        assert (measured[0].size, measured[0].rows, measured[0].tokens) == (item.size, item.rows, item.tokens)
        assert item.values.shape == (item.rows, cfg.model.depth.patch ** 2)
        assert int((sample.tokens == pad).sum()) == item.tokens == -(-item.rows // cfg.model.depth.merge)
        samples.append(sample)
    batch = collate_packed(samples[:5], tokenizer.pad_id, sum(s.tokens.numel() for s in samples[:5]))
    media = batch.media["depth"]
    assert len(media) == 5 and media.values.shape[0] == sum(media.rows)
    # The cost model prices it: attention is quadratic in a map's rows.
    flops = FlopModel.from_config(cfg.model)
    assert flops.item_forward("depth", 16) > 2 * flops.item_forward("depth", 8) > 0


def test_encoder_shares_reassemble(depth_data, megatron_cpu):
    """Encoded in two shares and put back together, the depth outputs equal one call over all."""
    from megaomni.data.collate import collate_packed
    from megaomni.data.loader import OmniDataLoader
    from megaomni.models.build import build_model

    cfg = depth_config(depth_data, "data.prefetch=false")
    tokenizer = OmniTokenizer(os.path.join(depth_data, "tokenizer.model"))
    loader = OmniDataLoader(cfg, tokenizer, 0, 1)
    batch = collate_packed(loader.samples[:6], tokenizer.pad_id, sum(s.tokens.numel() for s in loader.samples[:6]))
    loader.close()
    torch.manual_seed(0)
    model = build_model(cfg, 64, tokenizer.media_pad_id).double()
    encoder = model.depth_encoder
    batch.media["depth"].values = batch.media["depth"].values.double()
    items = media_items(batch.media)
    assert {i.modality for i in items} == {"depth"}
    shares = [tuple(range(0, len(items), 2)), tuple(range(1, len(items), 2))]
    with torch.no_grad():
        whole = encoder(batch.media["depth"])
        parts = [{"depth": encoder(share_inputs(batch.media, items, share)["depth"])} for share in shares]
    assert [share_outputs(items, s)["depth"] for s in shares] == [p["depth"].shape[0] for p in parts]
    torch.testing.assert_close(assemble(items, shares, parts)["depth"], whole, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
# The joint schedule: the depth encoder runs on both pipeline ranks, through megaomni's executor
# (under megatron-core's schedules it runs as the built-in encoders do, tested in tests/parallel).
@pytest.mark.parametrize("nproc, overrides", [
    pytest.param(2, ("parallel.pp=2", *JOINT), id="pp2-joint"),
])
def test_depth_trains_equal_to_one_process(depth_data, tmp_path_factory, nproc, overrides):
    setup = _setup(depth_data, tmp_path_factory)
    out = tmp_path_factory.mktemp("depth_run")
    records = setup.run(DENSE, out / "run", *overrides, nproc=nproc)
    reference = setup.reference(DENSE)
    assert_same_run(reference, records, rel=1e-5)
    if "pipeline.schedule=joint" in overrides:  # every pipeline rank encoded depth maps
        with open(out / "run" / "timelines" / "iter_0000001.json") as f:
            timeline = json.load(f)["timeline"]
        assert {e["rank"] for e in timeline["events"] if e["kind"] == "enc_f"} == {0, 1}


@pytest.mark.slow
def test_depth_maps_reach_the_loss(depth_data, tmp_path_factory):
    """The control: the same run with the maps zeroed trains differently."""
    setup = _setup(depth_data, tmp_path_factory)
    zeroed = setup.run(DENSE, tmp_path_factory.mktemp("depth_zeroed") / "run", "data.zero_media=true")
    assert zeroed[0]["loss"] != pytest.approx(setup.reference(DENSE)[0]["loss"], rel=1e-4)


_SETUPS: dict = {}


def _setup(depth_data: str, tmp_path_factory) -> ParitySetup:
    """One set of initial weights and one reference run for both parametrisations."""
    if depth_data not in _SETUPS:
        _SETUPS[depth_data] = ParitySetup(depth_data, tmp_path_factory.mktemp("depth_parity"), script=TRAIN)
    return _SETUPS[depth_data]
