"""The trainer's plan: how many optimisation steps, in batches of what size, with which learning rate.

Training is scheduled by steps, not epochs: a 4,000-image folder has 16 steps per epoch, so the 8
epochs that suit Fashion-MNIST's 55,000 images (1,712 steps) would give it 128 steps, too few for
the small CLIP to leave its starting point (it ended at chance). By default a run takes 8 epochs' worth
of steps, but at least ``min_steps`` (2,000: a 4,000-image 10-class Fashion-MNIST folder scored 77.75%
after 600 steps, under-trained; with ``shift-erase`` augmentation 84.25% after 1,500 steps and 85.50%
after 2,000) and at most ``max_steps``; linear warm-up over a fifth of the run (at most
``warmup_steps``), then cosine decay to 0 at the last step. Fashion-MNIST's own 55,000 images get
the minimum too; the shipped demo model was trained for 8 epochs (``--epochs 8``, 1,712 steps).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

#: Epochs' worth of steps a run takes by default (then clipped to [min_steps, max_steps]).
AUTO_EPOCHS = 8
MIN_STEPS = 2000
MAX_STEPS = 4000
#: Validation passes per run (the last one at the last step).
EVALUATIONS = 8


@dataclass(frozen=True)
class TrainPlan:
    """What a training run will do.

    Attributes:
        steps: Optimisation steps.
        batch_size: Images per step.
        steps_per_epoch: Steps that see every training image once.
        warmup_steps: Steps of linear learning-rate warm-up.
        eval_every: Steps between two validation passes.
        how: How the step count was chosen (``auto``, ``--steps`` or ``--epochs``).
    """

    steps: int
    batch_size: int
    steps_per_epoch: int
    warmup_steps: int
    eval_every: int
    how: str

    @property
    def epochs(self) -> float:
        """Passes over the training images the steps amount to."""
        return self.steps / self.steps_per_epoch

    def is_evaluation_step(self, step: int) -> bool:
        """True after `step` (0-based) when a validation pass is due (always after the last step)."""
        return (step + 1) % self.eval_every == 0 or step + 1 == self.steps

    def to_dict(self) -> dict:
        return {**asdict(self), "epochs": round(self.epochs, 2)}


def effective_batch_size(num_images: int, batch_size: int) -> int:
    """The configured batch, smaller for small image folders so that an epoch has >= 16 steps."""
    return max(1, min(batch_size, max(16, num_images // 16)))


def plan_training(num_images: int, batch_size: int, warmup_steps: int, steps: int | None = None,
                  epochs: int | None = None, min_steps: int = MIN_STEPS, max_steps: int = MAX_STEPS) -> TrainPlan:
    """The plan for `num_images` training images: `steps` if given, else `epochs` worth, else automatic.

    Raises:
        ValueError: Both `steps` and `epochs` given, or a count below 1.
    """
    if steps is not None and epochs is not None:
        raise ValueError("give the run's length as steps or as epochs, not both")
    if (steps is not None and steps < 1) or (epochs is not None and epochs < 1):
        raise ValueError(f"steps and epochs should be >= 1, but got steps={steps}, epochs={epochs}")
    batch = effective_batch_size(num_images, batch_size)
    per_epoch = max(1, num_images // batch)
    if steps is not None:
        total, how = steps, "--steps"
    elif epochs is not None:
        total, how = epochs * per_epoch, "--epochs"
    else:
        total, how = min(max_steps, max(min_steps, AUTO_EPOCHS * per_epoch)), "auto"
    warmup = max(1, min(warmup_steps, total // 5))
    return TrainPlan(total, batch, per_epoch, warmup, max(1, math.ceil(total / EVALUATIONS)), how)


def learning_rate_at(step: int, plan: TrainPlan, peak: float) -> float:
    """Linear warm-up to `peak` over ``plan.warmup_steps``, then cosine decay to 0 at the last step."""
    if step < plan.warmup_steps:
        return peak * (step + 1) / plan.warmup_steps
    progress = (step - plan.warmup_steps) / max(1, plan.steps - plan.warmup_steps)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def describe_plan(plan: TrainPlan, num_images: int, learning_rate: float) -> str:
    """One line: steps, batch, epochs, warm-up and decay."""
    source = {"auto": f"auto: {AUTO_EPOCHS} epochs' worth, at least {MIN_STEPS}, at most {MAX_STEPS}"}.get(
        plan.how, plan.how)
    return (f"plan: {plan.steps} steps ({source}) of {plan.batch_size} images = {plan.epochs:.1f} epochs of "
            f"{num_images:,} training images; learning rate {learning_rate:g}, linear warm-up over "
            f"{plan.warmup_steps} steps then cosine decay; validation every {plan.eval_every} steps")


def describe_expected_time(step_seconds: float, measured_steps: int, eval_seconds: float, plan: TrainPlan) -> str:
    """One line: the run's expected time from the measured seconds per step and per validation pass."""
    evaluations = math.ceil(plan.steps / plan.eval_every)
    total = step_seconds * plan.steps + eval_seconds * evaluations
    return (f"expected time: {_duration(total)} ({step_seconds:.2f} s/step measured over the first {measured_steps} "
            f"steps, {eval_seconds:.1f} s per validation pass x {evaluations})")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
