"""Image decoding with NVIDIA DALI (optional: the ``dali`` extra) that gives Pillow's pixels exactly.

DALI's CPU decoders are libjpeg-turbo and libpng, as Pillow's are: RGB output of JPEG and 8-bit
PNG is identical (tests/data/test_dali.py). Where the two differ, :func:`handles` says no and
Pillow decodes; images with alpha or 16-bit samples never come here (DALI's RGB output drops
alpha instead of compositing it: megaomni.media.image_modes).
"""

from __future__ import annotations

import functools
import os

import numpy as np


@functools.cache
def import_error() -> str | None:
    """Why ``nvidia.dali`` cannot be imported; None where it can."""
    try:
        import nvidia.dali  # noqa: F401
    except (ImportError, OSError) as e:  # OSError: a wheel without its shared libraries
        return str(e) or type(e).__name__
    return None


def available() -> bool:
    return import_error() is None


def handles(image_format: str | None, data: bytes) -> bool:
    """Whether DALI decodes these bytes (``image_format`` as Pillow's header read names it) to
    Pillow's exact RGB pixels: JPEG and PNG of at most 8 bits a sample. DALI scales 16-bit PNG
    samples by 1/257 where Pillow keeps the high byte (up to 1 level apart)."""
    return image_format == "JPEG" or (image_format == "PNG" and data[24] <= 8)  # IHDR bit depth


# Pipelines by process id: DALI's threads do not survive a fork, so a forked data worker
# (data.workers) that used its parent's pipeline would wait forever; it builds its own.
_pipelines: dict[int, object] = {}


def _pipeline():
    if (pipe := _pipelines.get(os.getpid())) is not None:
        return pipe
    from nvidia.dali import fn, pipeline_def, types

    # One encoded buffer a run, on the CPU (device_id=None: no GPU needed). Batching a step's
    # images into one run (batch_size=N, num_threads>1) would amortise the per-run overhead, and
    # device="mixed" would decode JPEG on the GPU, but nvJPEG's pixels are not libjpeg's.
    @pipeline_def(batch_size=1, num_threads=1, device_id=None, exec_dynamic=True, prefetch_queue_depth=1)
    def decode():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        # adjust_orientation=False: Pillow does not apply EXIF rotation either
        return fn.decoders.image(encoded, device="cpu", output_type=types.RGB, adjust_orientation=False)

    pipe = decode()
    pipe.build()
    _pipelines[os.getpid()] = pipe
    return pipe


def decode_rgb(data: bytes) -> np.ndarray | None:
    """Encoded image bytes -> uint8 ``[H, W, 3]``; None where DALI cannot decode them."""
    pipe = _pipeline()
    pipe.feed_input("encoded", [np.frombuffer(data, dtype=np.uint8)])
    try:
        (out,) = pipe.run()
    except RuntimeError:  # DALI's one exception for bad data; it may call the pipeline invalid
        del _pipelines[os.getpid()]
        return None
    return np.array(out.at(0))  # a copy: DALI reuses its output buffer on the next run
