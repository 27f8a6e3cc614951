"""Train an omni-modal model: ``python pretrain_omni.py --config FILE [KEY=VALUE ...]``.

Launch several ranks with ``torchrun --nproc-per-node N pretrain_omni.py ...``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from megaomni.checkpoint.check import CheckpointError
from megaomni.config import ConfigError, describe_fields, load_config
from megaomni.validation import validate


def _parse_args(argv: list[str]):
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="fields (override any as KEY=VALUE):\n" + "\n".join(describe_fields()),
    )
    parser.add_argument("--config", help="YAML recipe, e.g. examples/configs/tiny_omni.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.iters=20")
    return parser.parse_args(argv)


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(
        level=logging.INFO if rank == 0 or os.environ.get("MEGAOMNI_LOG_ALL_RANKS") else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
    )
    # megatron-core logs every parameter and its full optimizer config at INFO.
    logging.getLogger("megatron").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    import warnings

    # megatron-core warns once per missing optional package (TE, apex); we log our choices. Set
    # before validation, which reads a checkpoint's saved config through megatron-core.
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex|apex).*")
    try:
        cfg = load_config(args.config, args.overrides)
        validate(cfg, int(os.environ.get("WORLD_SIZE", 1)))
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    _setup_logging()
    from megaomni.platform.distributed import shutdown
    from megaomni.training.trainer import train

    try:
        train(cfg)
    except FloatingPointError as err:
        logging.getLogger("megaomni.train").error("%s", err)
        return 3
    except CheckpointError as err:  # e.g. the disk filled up while saving
        logging.getLogger("megaomni.checkpoint").error("%s", err)
        return 4
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
