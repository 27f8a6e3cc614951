"""Sample ids of packed tokens (the block masks' and CP masks' source) against repeat_interleave,
empty segments included, and the coverage check."""

from __future__ import annotations

import pytest
import torch

from megaomni.ops.context_parallel import sequence_ids


def test_sequence_ids_match_repeat_interleave():
    cu = torch.tensor([0, 3, 3, 10, 11], dtype=torch.int32)
    assert torch.equal(sequence_ids(cu, 11), torch.repeat_interleave(torch.arange(4), cu.diff()))
    with pytest.raises(ValueError, match="covers 11 tokens but the input has 12"):
        sequence_ids(cu, 12)
