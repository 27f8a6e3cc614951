"""The packed loader: a step's samples packed into micro-batches within budgets, the plan the
same under any data-parallel size, ranks balanced by estimated cost, dynamic (token-budget)
steps, and resumption."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from megaomni.data.balance import assign_to_ranks, contiguous_split, imbalance
from megaomni.data.loader import OmniDataLoader
from megaomni.data.sample import Sample
from megaomni.data.step_plan import pack, plan_step, sample_sizes, split_to
from megaomni.flops import TRAINING_RATIO, FlopModel
from tests.media_views import sample_media


def make_loader(cfg, tokenizer, rank=0, size=1, **data):
    cfg = copy.deepcopy(cfg)  # each loader keeps its own settings
    cfg.data.packing, cfg.data.seed, cfg.data.max_tokens = True, 5, 128
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return OmniDataLoader(cfg, tokenizer, dp_rank=rank, dp_size=size)


def rows(batches, pad_id):
    """The samples of packed micro-batches, as token lists, from their cu_seqlens."""
    out = []
    for b in batches:
        cu = b.cu_seqlens.tolist()
        for start, end in zip(cu, cu[1:]):
            segment = b.tokens[0, start:end].tolist()
            if any(t != pad_id for t in segment):
                out.append(segment)
    return out


def test_packed_micro_batches_hold_the_step_within_budget(cfg, tokenizer):
    loader = make_loader(cfg, tokenizer, global_batch_size=12)
    padded = make_loader(cfg, tokenizer, global_batch_size=12, packing=False, micro_batch_size=12)
    for _ in range(3):
        batches = loader.next_step()
        plan = loader.last_plan
        # Each row padded to its own length (data.row_padding=auto without pipelining).
        lengths = [plan.row_lengths[p] for p in plan.ranks[0]]
        assert [b.tokens.shape for b in batches] == [(1, n) for n in lengths] and max(lengths) == plan.length <= 128
        for b, length in zip(batches, lengths):
            cu = b.cu_seqlens
            assert cu[0] == 0 and cu[-1] == length and b.cu_seqlens.dtype == torch.int32
            starts = torch.zeros(length, dtype=torch.bool)
            starts[cu[:-1].long()] = True
            assert torch.equal(b.position_ids[0] == 0, starts)  # positions restart at every sample
        # The same samples, in the same order within the step, as the padded loader's.
        assert sorted(rows(batches, tokenizer.pad_id)) == sorted(
            [r[r != tokenizer.pad_id].tolist() for r in padded.next_step()[0].tokens])
        assert 0 <= plan.padding < 0.5


def test_plan_is_the_same_for_any_data_parallel_size(cfg, tokenizer):
    whole = make_loader(cfg, tokenizer, global_batch_size=16)
    ranks = [make_loader(cfg, tokenizer, rank=r, size=2, global_batch_size=16) for r in range(2)]
    for _ in range(3):
        all_rows = rows(whole.next_step(), tokenizer.pad_id)
        per_rank = [r.next_step() for r in ranks]
        assert ranks[0].last_plan.packs == whole.last_plan.packs
        assert all(len(b) >= 1 for b in per_rank)
        assert sorted(rows(per_rank[0], tokenizer.pad_id) + rows(per_rank[1], tokenizer.pad_id)) == sorted(all_rows)


def test_dynamic_steps_fill_a_token_budget_and_resume(cfg, tokenizer):
    loader = make_loader(cfg, tokenizer, global_batch_tokens=300)
    sizes = []
    for _ in range(4):
        step_rows = rows(loader.next_step(), tokenizer.pad_id)
        tokens = sum(map(len, step_rows))
        assert tokens <= 300
        sizes.append(len(step_rows))
    assert loader.state_dict()["consumed_samples"] == sum(sizes)
    state = loader.state_dict()
    expected = rows(loader.next_step(), tokenizer.pad_id)
    resumed = make_loader(cfg, tokenizer, global_batch_tokens=300)
    resumed.load_state_dict(state)
    assert rows(resumed.next_step(), tokenizer.pad_id) == expected


def _random_samples(seed: int, n: int) -> list[Sample]:
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        length = rng.randint(4, 60)
        images = [(torch.zeros(rng.choice([4, 16, 64]), 3), (2, 2)) for _ in range(rng.randint(0, 2))]
        audios = [torch.zeros(rng.randint(10, 90), 8) for _ in range(rng.randint(0, 1))]
        samples.append(Sample(key=str(i), tokens=torch.zeros(length, dtype=torch.long),
                              labels=torch.zeros(length, dtype=torch.long), loss_mask=torch.ones(length),
                              media=sample_media(images, audios)))
    return samples


@pytest.mark.parametrize("seed", range(5))
def test_every_budget_holds(cfg, seed):
    samples = _random_samples(seed, 40)
    cfg.data.max_tokens, cfg.data.max_patches, cfg.data.max_audio_frames = 128, 160, 200
    packs = pack([s.sizes() for s in samples], cfg.data)
    assert sorted(i for p in packs for i in p) == list(range(40))
    for p in packs:
        totals = [sum(sample_sizes(samples[i].sizes())[d] for i in p) for d in range(3)]
        assert totals[0] <= 128 and totals[1] <= 160 and totals[2] <= 200
    # Halving the fullest micro-batches keeps every sample, in step order within each.
    more = split_to(packs, len(packs) + 3)
    assert len(more) == len(packs) + 3 and sorted(i for p in more for i in p) == list(range(40))


def test_balancing_beats_the_contiguous_split(cfg):
    samples = sorted(_random_samples(7, 48), key=lambda s: -s.tokens.numel())  # worst case: sorted
    cfg.data.max_tokens = 64
    sizes = [s.sizes() for s in samples]
    plan = plan_step(sizes, cfg.data, FlopModel.from_config(cfg.model), ranks=4, minimum=1, pad_multiple=8)
    assert plan.imbalance_after < plan.imbalance_before
    assert plan.imbalance_after < 1.1
    assert sorted(p for mine in plan.ranks for p in mine) == list(range(len(plan.packs)))
    cfg.data.micro_batch_multiple = 8
    even = plan_step(sizes, cfg.data, FlopModel.from_config(cfg.model), ranks=4, minimum=1, pad_multiple=8,
                     equal=True)
    assert len(even.packs) % 8 == 0 and len(even.packs) >= len(plan.packs)
    assert {len(mine) for mine in even.ranks} == {len(even.packs) // 4}


def test_rows_padded_alone_pad_less_than_to_the_longest(cfg):
    """``per_row``: each packed row rounded up to the pad multiple on its own; the default pads
    every row to the step's longest (rounded). The same packs either way."""
    samples = _random_samples(3, 24)
    cfg.data.max_tokens = 64
    sizes, flops = [s.sizes() for s in samples], FlopModel.from_config(cfg.model)
    longest = plan_step(sizes, cfg.data, flops, ranks=2, minimum=1, pad_multiple=8)
    alone = plan_step(sizes, cfg.data, flops, ranks=2, minimum=1, pad_multiple=8, per_row=True)
    assert alone.packs == longest.packs and alone.ranks == longest.ranks and alone.length == longest.length
    tokens = [sum(sizes[i].tokens for i in p) for p in alone.packs]
    assert alone.row_lengths == [-(-t // 8) * 8 for t in tokens] and max(alone.row_lengths) == longest.length
    assert longest.row_lengths == [longest.length] * len(longest.packs)
    assert alone.padding == pytest.approx(1 - sum(tokens) / sum(alone.row_lengths))
    assert alone.padding < longest.padding


def test_assignment_guarantees_each_rank_its_micro_batches():
    costs = [100.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # balancing alone would give rank 0 one micro-batch
    per_rank = assign_to_ranks(costs, ranks=2, minimum=2)
    assert all(len(mine) >= 2 for mine in per_rank)
    assert sorted(i for mine in per_rank for i in mine) == list(range(6))
    even = assign_to_ranks(costs, ranks=2, minimum=1, equal=True)  # expert parallelism: same count
    assert [len(mine) for mine in even] == [3, 3]
    assert sorted(i for mine in even for i in mine) == list(range(6))
    with pytest.raises(ValueError, match="equally"):
        assign_to_ranks(costs[:5], ranks=2, minimum=1, equal=True)
    assert contiguous_split(5, 2) == [[0, 1], [2, 3, 4]]
    assert imbalance([1.0, 3.0]) == 1.5


def test_cost_model_counts_attention_quadratically(cfg):
    flops = FlopModel.from_config(cfg.model)
    short, long = (_random_samples(0, 1)[0] for _ in range(2))
    short.tokens, long.tokens = torch.zeros(10), torch.zeros(20)
    short.media = long.media = {}
    linear = TRAINING_RATIO * 2 * sum(flops.layer_params) * 10
    per_pair = TRAINING_RATIO * 4 * cfg.model.llm.num_layers * cfg.model.llm.hidden_size  # causal: n(n+1)/2 pairs
    assert long.sizes().cost(flops) - 2 * short.sizes().cost(flops) == pytest.approx(per_pair * (210 - 2 * 55))
    assert short.sizes().cost(flops) > linear
