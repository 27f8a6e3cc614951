"""Index data sets once, before training (megaomni/data/index.py): what the loader reads at
start-up instead of the shards.

    python tools/index_data.py DIR [DIR ...] [--config RECIPE.yaml] [--workers N] [KEY=VALUE ...]

The index is built for the recipe's settings (its tokenizer, pixel limits, sequence length; a
run with other ones needs its own), in parallel over shards with ``--workers``, showing progress.
A build cut short resumes where it stopped; an index already up to date is left as it is. With
``data.index=require`` a run refuses a data set whose index is missing or stale, rather than
building it at start-up.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from megaomni.config import ConfigError, load_config  # noqa: E402
from megaomni.data.index import StaleIndex, build_index, index_status  # noqa: E402
from megaomni.data.tokenizer import load_tokenizer  # noqa: E402
from megaomni.data.workers import Workers  # noqa: E402


def _progress(path: str, started: float):
    def show(done: int, shards: int, samples: int) -> None:
        rate = samples / max(time.perf_counter() - started, 1e-9)
        eta = (shards - done) * (time.perf_counter() - started) / max(done, 1)
        print(f"\rindex_data: {path}: {done}/{shards} shards, {samples:,} samples, {rate:,.0f} samples/s, "
              f"ETA {eta:.0f} s", end="", file=sys.stderr, flush=True)
    return show


def index_one(path: str, config: str | None, overrides: list[str], workers: int) -> str:
    """Build ``path``'s index for the recipe (where missing or stale); returns the summary line."""
    cfg = load_config(config, [*overrides, f"data.path={path}", f"data.workers={workers}"])
    tokenizer = load_tokenizer(cfg.data.tokenizer_path())
    folder, why = index_status(path, tokenizer, cfg)
    if why is None:
        return f"index_data: {path}: up to date ({folder})"
    started = time.perf_counter()
    pool = Workers(tokenizer, cfg)
    try:
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        index = build_index(path, tokenizer, cfg, pool.map, progress=_progress(path, started))
    finally:
        pool.close()
    print(file=sys.stderr)
    size = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))
    skipped = index.tally()
    reasons = skipped.summary()
    return (f"index_data: {path}: {len(index):,} samples from {len(index.shards)} shards in "
            f"{time.perf_counter() - started:.1f} s ({why}); skipped {sum(skipped.counts.values())}"
            f"{': ' + reasons if reasons else ''} -> {folder} ({size:,} bytes, "
            f"{size / max(len(index), 1):.0f} a sample)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="DIR", help="data set directories (KEY=VALUE: config overrides)")
    parser.add_argument("--config", help="the training recipe (its data and media settings make the index)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: every core)")
    args = parser.parse_intermixed_args(argv)
    overrides = [p for p in args.paths if "=" in p and not os.path.isdir(p)]
    paths = [p for p in args.paths if p not in overrides]
    try:
        for path in paths:
            print(index_one(path, args.config, overrides, args.workers))
    except (ConfigError, StaleIndex, FileNotFoundError, ValueError) as err:
        print(f"index_data: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
