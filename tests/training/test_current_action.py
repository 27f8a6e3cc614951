"""What the step watchdog names (megaomni.training.watchdog): the plan executor's running action,
read from the runner while a step runs, and nothing outside one."""

from __future__ import annotations

from megaomni.training.schedule import StepRunner
from megaomni.training.step import make_forward_step
from tests.models.test_parts import small_config
from tests.training import steps


def test_the_runner_names_the_action_it_is_running(megatron_cpu):
    cfg = small_config()
    cfg.pipeline.executor = "plan"  # at pp=1: the plan executor, as under the joint schedule
    state = steps.training_state(cfg)
    runner = StepRunner(cfg, state, steps.CPU, steps.VOCAB)
    forward_step, seen = make_forward_step(steps.CPU), []

    def watched(*args, **kwargs):  # the forward step runs inside an action: what would the watchdog say?
        seen.append(runner.current_action())
        return forward_step(*args, **kwargs)

    assert runner.current_action() == ""
    runner.run(1, [steps.micro_batch(cfg, 1), steps.micro_batch(cfg, 2, ("vision",))], watched)
    assert runner.current_action() == ""
    assert seen == ["llm_f(mb 0, stage 0)", "llm_f(mb 1, stage 0)"], seen
