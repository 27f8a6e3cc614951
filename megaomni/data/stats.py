"""Statistics of a data set that runs are judged against."""

from __future__ import annotations

import collections
import math

from megaomni.data.sample import parse_conversation
from megaomni.data.shards import iter_shard, list_shards
from megaomni.errors import BadSample


def text_only_entropy(data_dir: str) -> float:
    """H(answer | prompt text) of the data's usable conversations, in nats: the best answer NLL a
    model that ignores the media can reach (media sizes, hence placeholder counts, carry no
    information on the answer)."""
    by_prompt = collections.defaultdict(collections.Counter)
    for shard in list_shards(data_dir):
        for raw in iter_shard(shard):
            try:
                turns = parse_conversation(raw.conversation)
            except BadSample:
                continue
            prompt = " ".join(t["content"] for t in turns if t["role"] == "user")
            answer = " ".join(t["content"] for t in turns if t["role"] == "assistant")
            by_prompt[prompt][answer] += 1
    total = sum(sum(c.values()) for c in by_prompt.values())
    entropy = 0.0
    for counts in by_prompt.values():
        n = sum(counts.values())
        entropy += n / total * -sum(k / n * math.log(k / n) for k in counts.values())
    return entropy
