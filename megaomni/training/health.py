"""Training health: a collapsed model or a loss spike stops the run (exit 3), as a non-finite loss
does (megaomni.training.metrics.check_finite), instead of training on to the end."""

from __future__ import annotations

import collections
import math

from megaomni.config import TrainConfig

SPIKE_WINDOW = 20  # the iterations whose mean loss a spike is measured against
# How close to ln(vocab) a loss counts as the uniform guess (relative): a collapsed tiny model sat
# within 5e-8, the same model at initialisation 5e-5 away.
UNIFORM_TOLERANCE = 1e-5


class UnhealthyRun(Exception):
    """A run that no longer trains, or has just diverged."""


class HealthCheck:
    """``check`` once per iteration, with the iteration's loss (per token) and grad norm."""

    def __init__(self, vocab_size: int, collapse_steps: int, spike_factor: float, warmup_iters: int):
        self.vocab_size, self.uniform = vocab_size, math.log(vocab_size)  # the uniform guess's loss
        self.collapse_steps, self.spike_factor, self.warmup_iters = collapse_steps, spike_factor, warmup_iters
        self.collapsed = 0  # consecutive collapsed iterations, up to this one
        self.recent: collections.deque[float] = collections.deque(maxlen=SPIKE_WINDOW)

    @classmethod
    def from_config(cls, train: TrainConfig, vocab_size: int) -> HealthCheck:
        return cls(vocab_size, train.collapse_steps, train.spike_factor, train.warmup_iters)

    def check(self, iteration: int, loss: float, grad_norm: float) -> None:
        # Warm-up's small rates may leave the model where it started, which can be the uniform
        # guess too (a zero-initialised output layer): only the grad norm counts then.
        uniform = iteration > self.warmup_iters and abs(loss - self.uniform) <= UNIFORM_TOLERANCE * self.uniform
        self.collapsed = self.collapsed + 1 if grad_norm == 0 or uniform else 0
        if self.collapse_steps and self.collapsed >= self.collapse_steps:
            raise UnhealthyRun(
                f"the model has collapsed: grad norm 0 or loss at ln(vocab {self.vocab_size}) = {self.uniform:.4f} "
                f"(the uniform guess) for {self.collapsed} iterations, to iteration {iteration} (loss {loss:.4f}, "
                f"grad norm {grad_norm:.3g}): stopping (try a lower train.lr; train.collapse_steps=0 turns this "
                "check off)")
        if self.spike_factor and len(self.recent) == SPIKE_WINDOW:
            mean = sum(self.recent) / SPIKE_WINDOW
            if loss > self.spike_factor * mean:
                raise UnhealthyRun(
                    f"loss {loss:.4f} at iteration {iteration} is {loss / mean:.1f}x the mean {mean:.4f} of the "
                    f"previous {SPIKE_WINDOW} iterations (train.spike_factor={self.spike_factor:g}): stopping (try a "
                    "lower train.lr or train.clip_grad, or check the data; train.spike_factor=0 turns this check off)")
        self.recent.append(loss)
