"""pytorch/examples reinforcement_learning/reinforce.py: the policy, select_action and
finish_episode as written, without gym (synthetic states and rewards from a NumPy rng).

The actions an episode took are data of the training step (the example samples them in
select_action, one step at a time, in Python): the step recomputes each step's log-probability
as select_action does (``policy(state.unsqueeze(0))``, ``Categorical``, ``log_prob``) and then
runs finish_episode's loss and update. The discounted returns are computed outside, as the
example does, from Python floats. Compared with PyTorch with dropout off (``policy.eval()``:
draws differ between libraries); with dropout on, tracegrad's runs are compared among
themselves (equal draws under one seed)."""

from collections import deque

import numpy as np
from harness import assert_runs_close, module_states, run, run_port

import tracegrad as tg

GAMMA = 0.99
EPS = np.finfo(np.float32).eps.item()
STEPS = 6  # time steps of an episode


def policy_class(lib):
    nn, F = lib.nn, lib.nn.functional

    class Policy(nn.Module):
        def __init__(self):
            super(Policy, self).__init__()
            self.affine1 = nn.Linear(4, 128)
            self.dropout = nn.Dropout(p=0.6)
            self.affine2 = nn.Linear(128, 2)

            self.saved_log_probs = []
            self.rewards = []

        def forward(self, x):
            x = self.affine1(x)
            x = self.dropout(x)
            x = F.relu(x)
            action_scores = self.affine2(x)
            return F.softmax(action_scores, dim=1)

    return Policy


def make(lib, training=False):
    policy = policy_class(lib)()
    policy.train(training)
    return {"policy": policy, "optimizer": lib.optim.Adam(policy.parameters(), lr=1e-2)}


def step(lib, state, states, actions, returns):
    policy, optimizer = state["policy"], state["optimizer"]
    for t in range(STEPS):  # select_action's log-probability of the action taken
        probs = policy(states[t].float().unsqueeze(0))
        m = lib.distributions.Categorical(probs)
        policy.saved_log_probs.append(m.log_prob(actions[t : t + 1]))
    # finish_episode, from ``returns = torch.tensor(returns)`` on
    policy_loss = []
    returns = (returns - returns.mean()) / (returns.std() + EPS)
    for log_prob, R in zip(policy.saved_log_probs, returns):
        policy_loss.append(-log_prob * R)
    optimizer.zero_grad()
    policy_loss = lib.cat(policy_loss).sum()
    policy_loss.backward()
    optimizer.step()
    del policy.rewards[:]
    del policy.saved_log_probs[:]
    return policy_loss


def discounted(rewards):
    """finish_episode's returns."""
    R = 0
    returns = deque()
    for r in rewards[::-1]:
        R = r + GAMMA * R
        returns.appendleft(R)
    return np.array(returns, np.float32)


def episodes(count=4, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        states = rng.standard_normal((STEPS, 4)).astype(np.float32)
        actions = rng.integers(0, 2, STEPS)
        rewards = (actions == (states[:, 0] > 0)).astype(float)  # right when it follows x0
        out.append((states, actions, discounted(list(rewards))))
    return out


def test_reinforce_update_matches_compiled_and_torch():
    runs = run_port(make, step, episodes())
    assert all(np.isfinite(runs["eager"].losses))


def test_reinforce_with_dropout_compiled_matches_eager():
    def make_training(lib):
        return make(lib, training=True)

    tg.manual_seed(1)
    initial = module_states(make_training(tg))
    batches = episodes(seed=1)
    eager = run(tg, "eager", make_training, step, batches, initial, seed=3)
    for mode in ("module", "step"):
        compiled = run(tg, mode, make_training, step, batches, initial, seed=3)
        assert_runs_close(compiled, eager, 1e-5, 1e-6, f"{mode} vs eager")


def test_select_action_samples_from_the_policy():
    """select_action as written, on a synthetic state: the sample is one of the actions and
    its saved log-probability is the log of the policy's probability for it."""
    tg.manual_seed(0)
    policy = make(tg)["policy"]

    def select_action(state):
        state = tg.from_numpy(state).float().unsqueeze(0)
        probs = policy(state)
        m = tg.distributions.Categorical(probs)
        action = m.sample()
        policy.saved_log_probs.append(m.log_prob(action))
        return action.item()

    state = np.random.default_rng(2).standard_normal(4)
    actions = [select_action(state) for _ in range(400)]
    assert set(actions) == {0, 1}
    probs = policy(tg.tensor(state, dtype=tg.float32).unsqueeze(0)).detach().numpy()[0]
    np.testing.assert_allclose(np.mean(actions), probs[1], atol=0.08)
    for action, log_prob in zip(actions, policy.saved_log_probs, strict=True):
        np.testing.assert_allclose(log_prob.item(), np.log(probs[action]), rtol=1e-5)
