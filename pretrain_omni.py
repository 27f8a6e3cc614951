"""Train an omni-modal model: ``python pretrain_omni.py --config FILE [KEY=VALUE ...]``.

Launch several ranks with ``torchrun --nproc-per-node N pretrain_omni.py ...``.

Exit codes: 0 done; 2 configuration error, e.g. an output directory holding an earlier run (one
line on stderr); 3 the run stopped training: a non-finite loss or grad norm, a collapsed model, a
loss spike; 4 a checkpoint could not be written (e.g. the disk is full; the partial directory
is removed); 5 a step phase ran past train.step_timeout_s (a hang: the rank, iteration and phase are
logged, the stacks dumped); 128 + the signal for a run stopped by SIGTERM (143) or SIGINT (130) at a step
boundary, with a checkpoint saved there (a line says where, and how to resume; train.exit_grace_s).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from megaomni.checkpoint.check import SaveError
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
    from megaomni.training.health import UnhealthyRun
    from megaomni.training.preemption import Preempted
    from megaomni.training.trainer import train

    log = logging.getLogger("megaomni.train")
    try:
        train(cfg)
    except SaveError as err:  # e.g. the disk filled up while saving (a ConfigError too: caught first)
        logging.getLogger("megaomni.checkpoint").error("%s", err)
        return 4
    except ConfigError as err:  # found once the ranks have started (megaomni.training.run_dir)
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except (FloatingPointError, UnhealthyRun) as err:
        log.error("%s", err)
        return 3
    except Preempted as stop:
        log.warning("%s", stop)
        return stop.exit_code
    except KeyboardInterrupt:  # Ctrl-C before the first step or after the last: nothing to save
        log.error("interrupted by SIGINT outside the training steps; nothing saved")
        return 130
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
