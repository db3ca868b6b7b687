"""The tail of a training step: loss, backward, gradient clipping, the update and where
``zero_grad`` goes; and the optimizers and schedulers a step is made with.

The ``step`` frame makes the function a whole training step; the training constructs
(``Builder.options``) vary it: clipping between backward and update, a learning rate scheduler
the caller steps between calls, the optimizer options (weight decay, nesterov, amsgrad,
maximize, AdamW, parameter groups), gradient accumulation over two calls and evaluation calls
between training calls (those two are written by ``generate._source``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .builder import Builder

# How a step reaches its optimizer: by name, through a dict or a list, or only through helper
# functions whose closures hold it (tracing its step() is the first sign of it).
OPTIMIZER_PATHS = {
    "name": ([], "opt.zero_grad()", "opt.step()"),
    "dict": (['kit = {"opt": opt}'], 'kit["opt"].zero_grad()', 'kit["opt"].step()'),
    "list": (["kit = [opt]"], "kit[0].zero_grad()", "kit[0].step()"),
    "helpers": (
        ["def zero():", "    opt.zero_grad()", "def update():", "    opt.step()"],
        "zero()",
        "update()",
    ),
}

# (an eps far above rounding for those dividing by the gradient's size: a gradient that is 0
# but for rounding, such as a key projection's bias under softmax or a bias before a batch
# norm, would otherwise be its sign; near eps, the update moves by lr / eps per unit of it)
OPTIMIZERS = [
    "optim.SGD(m.parameters(), lr=0.05, momentum=0.9)",
    "optim.SGD(m.parameters(), lr=0.05, momentum=0.9, dampening=0.3)",
    "optim.Adam(m.parameters(), lr=0.01, eps=1e-3)",
    "optim.AdamW(m.parameters(), lr=0.01, weight_decay=0.1, eps=1e-3)",
    "optim.RMSprop(m.parameters(), lr=0.01, momentum=0.5, centered=True, eps=1e-3)",
    "optim.Adagrad(m.parameters(), lr=0.05, eps=1e-3)",
]

# Two parameter groups of their own settings: w0, and every other parameter
GROUPS = (
    '[{"params": [m.w0], {first}}, {"params": [p for n, p in m.named_parameters() if n != "w0"]}]'
)

# The optimizer_options construct's optimizers: the options the plain list leaves at defaults
OPTIMIZER_OPTIONS = [
    "optim.SGD(m.parameters(), lr=0.05, weight_decay=0.1)",
    "optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)",
    "optim.SGD(m.parameters(), lr=0.05, momentum=0.5, maximize=True)",
    "optim.Adam(m.parameters(), lr=0.01, eps=1e-3, amsgrad=True)",
    "optim.Adam(m.parameters(), lr=0.01, eps=1e-3, weight_decay=0.05, maximize=True)",
    "optim.AdamW(m.parameters(), lr=0.01, eps=1e-3, amsgrad=True)",
    "optim.AdamW(m.parameters(), lr=0.01, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.2, "
    "maximize=True, amsgrad=True)",
    "optim.RMSprop(m.parameters(), lr=0.01, weight_decay=0.1, maximize=True, eps=1e-3)",
    "optim.Adagrad(m.parameters(), lr=0.05, lr_decay=0.1, weight_decay=0.1, eps=1e-3)",
    "optim.Adadelta(m.parameters(), lr=0.5, weight_decay=0.1, eps=1e-3)",
    "optim.SGD(" + GROUPS.replace("{first}", '"lr": 0.1, "weight_decay": 0.1') + ", lr=0.05, "
    "momentum=0.9, nesterov=True)",
    "optim.AdamW(" + GROUPS.replace("{first}", '"weight_decay": 0.0, "amsgrad": True')
    + ", lr=0.01, eps=1e-3)",
]  # fmt: skip

# Schedulers the caller steps between calls ({cycle}: whether the optimizer has a momentum
# or betas for OneCycleLR to cycle)
SCHEDULERS = [
    "optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)",
    "optim.lr_scheduler.MultiStepLR(opt, [1, 2], gamma=0.3)",
    "optim.lr_scheduler.ExponentialLR(opt, 0.7)",
    "optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4, eta_min=0.001)",
    "optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 / (epoch + 1))",
    "optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=10, cycle_momentum={cycle})",
]

# Clipping between backward and the update; ``gnorm``, the total norm, is returned
CLIPS = [
    "gnorm = nn.utils.clip_grad_norm_(m.parameters(), 0.5)",
    "gnorm = nn.utils.clip_grad_norm_(list(m.parameters()), 1.0, norm_type=float('inf'))",
    "gnorm = nn.utils.clip_grad_norm_(m.parameters(), 2.0, norm_type=1)",
    "nn.utils.clip_grad_value_(m.parameters(), 0.1)",
]

# Where a step drops its .grad: first (the usual loop), last, or never (it accumulates)
ZERO_GRAD_PLACES = ["first", "first", "last", "never"]


@dataclass
class StepTail:
    """The parts of a step after the body, to arrange as a step, or as the two steps of
    accumulation (backward only, then backward, update and zero_grad)."""

    backward: list[str]  # the loss and its backward
    clip: list[str]
    update: list[str]
    zero: str
    place: str  # of zero_grad, one of ZERO_GRAD_PLACES

    def lines(self) -> list[str]:
        body = [*self.backward, *self.clip, *self.update]
        if self.place == "never":
            return body
        return [self.zero, *body] if self.place == "first" else [*body, self.zero]

    def updating(self) -> list[str]:
        return [*self.backward, *self.clip, *self.update, self.zero]

    def outputs(self) -> list[str]:
        """What the step returns before its results: the loss, the clipped norm."""
        return ["loss", *(["gnorm"] if any("gnorm" in line for line in self.clip) else [])]


def step_tail(b: Builder, results: list[str], data_step: bool) -> StepTail:
    """Loss, backward and the update of a whole training step (a manual ``.data`` update for
    ``data_step``, else an optimizer of ``setup``)."""
    terms = ["v1", *results]  # v1 reads every parameter
    loss = " + ".join(f"({name}.sum() * {k + 1}.0)" for k, name in enumerate(terms))
    if data_step:
        zero = "m.zero_grad()"
        update = [
            "for p in m.parameters():",
            "    if p.grad is not None:  # (a layer the loss does not reach has none)",
            "        p.data.add_(-0.05 * p.grad)",
        ]
    else:
        zero, update = _optimizer(b)
    clip = [b.rng.choice(CLIPS)] if "clip_grad" in b.options else []
    if b.rng.random() < 0.3:  # the caller's own backward: a .grad exists as a call starts
        b.add_between("with tg.enable_grad(): (m.w0 * m.w0).sum().backward()")
    place = b.rng.choice(ZERO_GRAD_PLACES)
    return StepTail([f"loss = {loss}", "loss.backward()"], clip, update, zero, place)


def _optimizer(b: Builder) -> tuple[str, list[str]]:
    """The optimizer in ``setup``, its schedule between calls; its zero_grad and update."""
    choices = OPTIMIZER_OPTIONS if "optimizer_options" in b.options else OPTIMIZERS
    spelling = b.rng.choice(choices)
    b.add_setup(f"opt = {spelling}")
    setup, zero, update = OPTIMIZER_PATHS[b.rng.choice(sorted(OPTIMIZER_PATHS))]
    for line in setup:
        b.add_setup(line)
    b.state.append("opt")
    if "scheduler" in b.options:
        cycle = "momentum=" in spelling or "Adam" in spelling
        b.add_setup(f"sched = {b.rng.choice(SCHEDULERS).format(cycle=cycle)}")
        b.add_setup("groups = opt.param_groups")  # the rates the schedule set, compared
        b.state.append("groups")
        b.add_between("sched.step()")
    else:
        b.add_between('opt.param_groups[0]["lr"] *= 0.5')  # a schedule's decay
    return zero, b.rng.choice([[update]] * 4 + [["pass"]])
