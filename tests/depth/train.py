"""pretrain_omni.py with the depth modality registered first: how a user trains a modality of
their own (``torchrun tests/depth/train.py --config ... model.depth.hidden_size=...``)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from megaomni.media.registry import register  # noqa: E402
from pretrain_omni import main  # noqa: E402
from tests.depth.modality import DEPTH_MODALITY  # noqa: E402

if __name__ == "__main__":
    register(DEPTH_MODALITY)
    sys.exit(main())
