"""Python side effects a compiled call cannot repeat are refused when tracing meets them,
with the group, key or name involved, instead of later calls silently differing from eager."""

import pytest

import tracegrad as tg
from tracegrad import nn


def model_and_optimizer():
    tg.manual_seed(0)
    model = nn.Linear(3, 1)
    return model, tg.optim.SGD(model.parameters(), lr=0.1)


def test_a_scheduler_stepped_inside_a_compiled_step_is_refused_and_the_rate_kept():
    model, opt = model_and_optimizer()
    scheduler = tg.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    def step(x):
        opt.zero_grad()
        loss = model(x).sum()
        loss.backward()
        opt.step()
        scheduler.step()
        return loss

    with pytest.raises(tg.TraceError, match=r"param group 0 of the SGD.*'lr': 0.1 -> 0.05"):
        tg.compile(step)(tg.randn(4, 3))
    assert opt.param_groups[0]["lr"] == 0.1


def test_a_group_changed_before_the_update_is_refused_too():
    model, opt = model_and_optimizer()

    def step(x):
        opt.param_groups[0]["lr"] *= 0.5
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()

    with pytest.raises(tg.TraceError, match="outside the compiled function"):
        tg.compile(step)(tg.randn(4, 3))


def test_a_scheduler_stepped_between_calls_is_fine():
    model, opt = model_and_optimizer()
    scheduler = tg.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    def step(x):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()

    compiled = tg.compile(step)
    for _ in range(3):
        compiled(tg.randn(4, 3))
        scheduler.step()
    assert opt.param_groups[0]["lr"] == 0.1 * 0.5**3


def test_a_computed_tensor_stored_in_a_dict_is_refused():
    model, opt = model_and_optimizer()
    state = {"h": tg.zeros(4, 1)}

    def step(x):
        opt.zero_grad()
        h = state["h"].detach() + model(x)
        state["h"] = h
        h.sum().backward()
        opt.step()

    with pytest.raises(tg.TraceError, match=r"state\['h'\].*copy_"):
        tg.compile(step)(tg.randn(4, 3))


def test_a_state_tensor_updated_in_place_compiles_and_matches_eager():
    results = []
    for compile_ in (False, True):
        model, opt = model_and_optimizer()
        state = {"h": tg.zeros(4, 1)}

        def step(x, model=model, opt=opt, state=state):
            opt.zero_grad()
            h = state["h"] + model(x)
            loss = (h * h).sum()
            loss.backward()
            opt.step()
            with tg.no_grad():
                state["h"].copy_(h)
            return loss

        run = tg.compile(step) if compile_ else step
        tg.manual_seed(1)
        results.append([run(tg.randn(4, 3)).item() for _ in range(4)])
    assert results[1] == pytest.approx(results[0], rel=1e-6)


def test_a_module_keeping_a_computed_tensor_as_an_attribute_is_refused():
    class Keeping(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 3)
            self.last = None

        def forward(self, x):
            self.last = self.linear(x)
            return self.last.relu()

    with pytest.raises(tg.TraceError, match=r"self\.last"):
        tg.compile(Keeping())(tg.randn(2, 3))
