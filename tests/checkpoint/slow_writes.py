"""pretrain_omni.py whose checkpoint writer processes sleep before writing (longer than a test
waits), so that a test can kill the trainer while a save is being written."""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync  # noqa: E402

import pretrain_omni  # noqa: E402

_write = FileSystemWriterAsync.write_preloaded_data
DELAY_S = 600


def _slow_write(*args, **kwargs):
    time.sleep(DELAY_S)
    return _write(*args, **kwargs)


if __name__ == "__main__":
    FileSystemWriterAsync.write_preloaded_data = staticmethod(_slow_write)
    sys.exit(pretrain_omni.main())
