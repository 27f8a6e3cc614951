"""Statistics of a data set that runs are judged against."""

from __future__ import annotations

import collections
import json
import math
import os
import tarfile


def text_only_entropy(data_dir: str) -> float:
    """H(answer | prompt text) of the data, in nats: the best answer NLL a model that ignores the
    media can reach (media sizes, hence placeholder counts, carry no information on the answer)."""
    by_prompt = collections.defaultdict(collections.Counter)
    for name in sorted(os.listdir(data_dir)):
        if not name.endswith(".tar"):
            continue
        with tarfile.open(os.path.join(data_dir, name)) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    turns = json.load(tar.extractfile(member))
                    prompt = " ".join(t["content"] for t in turns if t["role"] == "user")
                    answer = " ".join(t["content"] for t in turns if t["role"] == "assistant")
                    by_prompt[prompt][answer] += 1
    total = sum(sum(c.values()) for c in by_prompt.values())
    entropy = 0.0
    for counts in by_prompt.values():
        n = sum(counts.values())
        entropy += n / total * -sum(k / n * math.log(k / n) for k in counts.values())
    return entropy
