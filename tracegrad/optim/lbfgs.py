"""L-BFGS, PyTorch's port of minFunc: several closure evaluations per ``step``, with an optional
strong-Wolfe line search.

How many times the closure runs depends on the losses it returns, so the step runs eagerly, on
one flat NumPy vector of all the parameters; to compile, compile the closure (each evaluation
then runs the generated forward and backward). Its state keeps PyTorch's names and layout,
held by the first parameter, with tensors for PyTorch's tensors."""

from __future__ import annotations

import numpy as np

from tracegrad import tape
from tracegrad.errors import TraceError, at_user_line
from tracegrad.optim.optimizer import Optimizer, check_settings
from tracegrad.tensor import Tensor, active_tracer, wrap

# The state entries that are vectors or lists of them (tensors in the state dict)
_VECTORS = ("d", "H_diag", "prev_flat_grad")
_LISTS = ("old_dirs", "old_stps", "ro", "al")


class LBFGS(Optimizer):
    """L-BFGS, with PyTorch's algorithm, arguments and state; ``step(closure)`` runs it.

    It runs eagerly (its control flow depends on values); the closure it calls may be a compiled
    function.

    Args:
        params: an iterable of parameters (one group).
        lr: the learning rate (step size).
        max_iter: iterations per ``step``.
        max_eval: function evaluations per ``step`` (default ``max_iter * 1.25``).
        tolerance_grad: stop when the gradient's largest entry is at most this.
        tolerance_change: stop when the loss or the step changes by at most this.
        history_size: how many updates the Hessian approximation keeps.
        line_search_fn: None or ``"strong_wolfe"``.

    Raises:
        ValueError: for a negative ``lr`` or an unknown ``line_search_fn``.

    Examples:
        >>> w = nn.Parameter(tg.tensor([3.0]))
        >>> opt = optim.LBFGS([w], line_search_fn="strong_wolfe")
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = ((w - 1) ** 2).sum()
        ...     loss.backward()
        ...     return loss
        >>> _ = opt.step(closure)
        >>> round(w.item(), 4)
        1.0
    """

    def __init__(
        self,
        params,
        lr=1,
        max_iter=20,
        max_eval=None,
        tolerance_grad=1e-7,
        tolerance_change=1e-9,
        history_size=100,
        line_search_fn=None,
    ):
        check_settings("LBFGS", lr=lr)
        if line_search_fn not in (None, "strong_wolfe"):
            raise ValueError(f"LBFGS: line_search_fn must be None or 'strong_wolfe', got "
                             f"{line_search_fn!r}")  # fmt: skip
        defaults = dict(
            lr=lr,
            max_iter=max_iter,
            max_eval=max_iter * 5 // 4 if max_eval is None else max_eval,
            tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change,
            history_size=history_size,
            line_search_fn=line_search_fn,
        )
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        self._params = self.param_groups[0]["params"]

    # --- the parameters as one flat vector --------------------------------------------------------

    def _flat_grad(self) -> np.ndarray:
        dtype = self._params[0].array.dtype
        return np.concatenate([
            np.zeros(p.array.size, dtype) if p.grad is None else p.grad.array.reshape(-1)
            for p in self._params
        ]).astype(dtype, copy=False)  # fmt: skip

    def _add_grad(self, step_size, update: np.ndarray) -> None:
        """p += step_size * update, piece by piece."""
        offset = 0
        for p in self._params:
            piece = update[offset : offset + p.array.size].reshape(p.array.shape)
            p.add_(wrap(piece), alpha=step_size)
            offset += p.array.size

    def _directional_evaluate(self, closure, x, t, d):
        """The loss and flat gradient at x + t d; the parameters are left at x."""
        self._add_grad(t, d)
        loss = float(_evaluate(closure))
        flat_grad = self._flat_grad()
        for p, value in zip(self._params, x, strict=True):
            p.copy_(wrap(value))
        return loss, flat_grad

    # --- the step ---------------------------------------------------------------------------------

    def step(self, closure):
        """Run up to ``max_iter`` L-BFGS iterations; ``closure`` reevaluates the model (zero
        the gradients, compute the loss, backward) and returns the loss. Returns its first
        loss."""
        if active_tracer() is not None:
            raise TraceError(at_user_line(
                "LBFGS.step(closure) cannot be traced into a compiled step: how many times it "
                "runs the closure depends on the loss values. Call it eagerly and compile the "
                "closure instead: opt.step(tg.compile(closure))"
            ))  # fmt: skip
        with tape.no_grad(), np.errstate(all="ignore"):
            return self._step(closure)

    def _step(self, closure):
        group = self.param_groups[0]
        lr, max_iter, max_eval = group["lr"], group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        history_size = group["history_size"]

        state = self.state.setdefault(self._params[0], {})
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)
        orig_loss = _evaluate(closure)
        loss = float(orig_loss)
        current_evals = 1
        state["func_evals"] += 1
        flat_grad = self._flat_grad()
        if np.abs(flat_grad).max() <= tolerance_grad:
            return orig_loss

        d, t, old_dirs, old_stps, ro, h_diag, prev_flat_grad, prev_loss = (
            _arrays(state.get(k))
            for k in ("d", "t", "old_dirs", "old_stps", "ro", "H_diag", "prev_flat_grad",
                      "prev_loss")
        )  # fmt: skip
        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            # the direction: -H g, H the L-BFGS estimate of the inverse Hessian
            if state["n_iter"] == 1:
                d, old_dirs, old_stps, ro, h_diag = -flat_grad, [], [], [], 1
            else:
                y = flat_grad - prev_flat_grad
                s = d * t
                ys = y.dot(s)
                if ys > 1e-10:  # the curvature condition: remember this pair
                    if len(old_dirs) == history_size:
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    h_diag = ys / y.dot(y)
                al = _arrays(state.setdefault("al", [None] * history_size))
                d = _two_loop(-flat_grad, old_dirs, old_stps, ro, h_diag, al)
                state["al"] = _tensors(al)
            prev_flat_grad = flat_grad.copy()
            prev_loss = loss
            # the step length: the first iteration ever is kept small
            first = state["n_iter"] == 1
            t = min(1.0, 1.0 / np.abs(flat_grad).sum()) * lr if first else lr
            gtd = flat_grad.dot(d)
            if gtd > -tolerance_change:  # no descent along d
                break

            ls_func_evals = 0
            if group["line_search_fn"] is not None:
                x_init = [p.array.copy() for p in self._params]

                def obj_func(x, t, d):
                    return self._directional_evaluate(closure, x, t, d)

                loss, flat_grad, t, ls_func_evals = _strong_wolfe(
                    obj_func, x_init, t, d, loss, flat_grad, gtd,
                    tolerance_change=tolerance_change, max_ls=max_eval - current_evals,
                )  # fmt: skip
                self._add_grad(t, d)
                opt_cond = np.abs(flat_grad).max() <= tolerance_grad
            else:
                self._add_grad(t, d)
                opt_cond = False
                if n_iter != max_iter:  # (the last iteration's values are not needed)
                    loss = float(_evaluate(closure))
                    flat_grad = self._flat_grad()
                    opt_cond = np.abs(flat_grad).max() <= tolerance_grad
                    ls_func_evals = 1
            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals

            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            if np.abs(d * t).max() <= tolerance_change or abs(loss - prev_loss) < tolerance_change:
                break  # too small a change in the parameters or the loss

        state.update(
            d=_tensors(d),
            t=float(t),
            old_dirs=_tensors(old_dirs),
            old_stps=_tensors(old_stps),
            ro=_tensors(ro),
            H_diag=_tensors(h_diag),
            prev_flat_grad=_tensors(prev_flat_grad),
            prev_loss=prev_loss,
        )
        return orig_loss


def _evaluate(closure):
    with tape.enable_grad():
        return closure()


def _two_loop(q, old_dirs, old_stps, ro, h_diag, al):
    """-H g by the two-loop recursion over the remembered pairs (q = -g on entry); fills al."""
    for i in range(len(old_dirs) - 1, -1, -1):
        al[i] = old_stps[i].dot(q) * ro[i]
        q -= old_dirs[i] * al[i]
    r = q * h_diag
    for i in range(len(old_dirs)):
        be_i = old_dirs[i].dot(r) * ro[i]
        r += old_stps[i] * (al[i] - be_i)
    return r


def _arrays(value):
    """State as the step computes with it: arrays and NumPy scalars for tensors."""
    if isinstance(value, list):
        return [_arrays(v) for v in value]
    if isinstance(value, Tensor):
        data = value.array
        return data[()] if data.ndim == 0 else data.copy()
    return value


def _tensors(value):
    """State as it is kept: tensors for arrays and NumPy scalars, as PyTorch's."""
    if isinstance(value, list):
        return [_tensors(v) for v in value]
    if isinstance(value, np.ndarray | np.generic):
        return wrap(np.array(value))
    return value


def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    """The minimizer of the cubic through (x1, f1, g1) and (x2, f2, g2), within bounds."""
    xmin_bound, xmax_bound = bounds if bounds is not None else sorted((x1, x2))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if d2_square < 0:
        return (xmin_bound + xmax_bound) / 2.0
    d2 = np.sqrt(d2_square)
    if x1 <= x2:
        min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(min_pos, xmin_bound), xmax_bound)


def _strong_wolfe(obj_func, x, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9,
                  max_ls=25):  # fmt: skip
    """A step length along d satisfying the strong Wolfe conditions: bracket one, then zoom
    in by cubic interpolation. Returns (loss, flat gradient, step length, evaluations)."""
    d_norm = np.abs(d).max()
    g = g.copy()
    f_new, g_new = obj_func(x, t, d)
    ls_func_evals = 1
    gtd_new = g_new.dot(d)
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        # bracketing phase
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new.copy()], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new.copy()], [gtd_prev, gtd_new]
            break
        # interpolate
        min_step, max_step = t + 0.01 * (t - t_prev), t * 10
        t_prev, t = (
            t,
            _cubic_interpolate(
                t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step)
            ),
        )
        f_prev, g_prev, gtd_prev = f_new, g_new.copy(), gtd_new
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
    if ls_iter == max_ls:  # reached the maximum number of evaluations
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]

    # zoom phase: a point satisfying the conditions, or too short a bracket
    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0],
                               bracket[1], bracket_f[1], bracket_gtd[1])  # fmt: skip
        # too close to a boundary, and without progress last time: move away from it
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                if abs(t - max(bracket)) < abs(t - min(bracket)):
                    t = max(bracket) - eps
                else:
                    t = min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            # Armijo condition not met, or not lower than the lowest point
            bracket[high_pos], bracket_f[high_pos] = t, f_new
            bracket_g[high_pos], bracket_gtd[high_pos] = g_new.copy(), gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                # the old high becomes the new low
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos] = bracket_g[low_pos]
                bracket_gtd[high_pos] = bracket_gtd[low_pos]
            bracket[low_pos], bracket_f[low_pos] = t, f_new
            bracket_g[low_pos], bracket_gtd[low_pos] = g_new.copy(), gtd_new
    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals
