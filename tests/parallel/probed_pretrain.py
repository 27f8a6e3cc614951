"""pretrain_omni.py with the parity probe installed (tests/parallel/probe.py): each rank writes
what it held, encoded and clipped by into OUTPUT_DIR/probe/."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from pretrain_omni import main  # noqa: E402
from tests.parallel.probe import install  # noqa: E402

if __name__ == "__main__":
    install()
    sys.exit(main())
