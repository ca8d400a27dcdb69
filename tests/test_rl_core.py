"""Meta-RL core: nav2d, sampling, advantages, the linear baseline, the policy-gradient inner step, MAML-RL's
meta-gradient, TRPO's conjugate gradient, resume and the command end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Normal

from fewshot.cli import main
from fewshot.config import resolve
from fewshot.learners.maml_rl import conjugate_gradient
from fewshot.rl.learner import RLLearner
from fewshot.rl.nav2d import Nav2D
from fewshot.rl.policy import GaussianPolicy, kl_divergence, log_prob
from fewshot.rl.sampling import (Trajectories, advantages, baseline_features, discounted_returns, gae,
                                 linear_baseline, rollout_seed)
from fewshot.runs import build_learner, trainer_for
from fewshot.tasks.episode import stack_episodes

TINY = dict(dataset="nav2d", steps=4, meta_batch=2, trajectories=3, horizon=8, policy_hidden=[8, 8],
            val_every=2, val_episodes=2, eval_tasks=3, eval_inner_steps=1, checkpoint_every=2, log_every=1,
            cg_iters=3, ls_steps=3)


def tiny(algo: str, **overrides):
    values = {**TINY, **overrides, "algo": algo}
    if algo != "maml-trpo":
        values.pop("cg_iters"), values.pop("ls_steps")
    return resolve({}, values)


# -- nav2d ----------------------------------------------------------------------------------------------
def test_nav2d_dynamics_clip_actions_and_reward_minus_distance():
    env = Nav2D(horizon=3).make([{"goal": [0.3, -0.2]}, {"goal": [-0.5, 0.5]}], episodes=2)
    assert env.batch == 4 and torch.equal(env.reset(), torch.zeros(4, 2))
    obs, reward, done, _ = env.step(torch.tensor([[0.05, 1.0], [-3.0, 0.0], [0.0, 0.0], [0.1, -0.1]]))
    assert torch.allclose(obs, torch.tensor([[0.05, 0.1], [-0.1, 0.0], [0.0, 0.0], [0.1, -0.1]]))
    goals = torch.tensor([[0.3, -0.2], [0.3, -0.2], [-0.5, 0.5], [-0.5, 0.5]])
    assert torch.allclose(reward, -(obs - goals).norm(dim=1))
    assert not done.any()
    env.step(torch.zeros(4, 2))
    assert env.step(torch.zeros(4, 2))[2].all()            # the third step ends the episodes
    with pytest.raises(RuntimeError, match="reset"):
        env.step(torch.zeros(4, 2))


def test_nav2d_tasks_are_seeded_uniform_goals():
    family = Nav2D()
    tasks = family.sample_tasks(500, seed=3)
    assert tasks == family.sample_tasks(500, seed=3) and tasks != family.sample_tasks(500, seed=4)
    goals = torch.tensor([t["goal"] for t in tasks])
    assert goals.abs().max() <= 0.5 and goals.min() < -0.45 and goals.max() > 0.45
    assert abs(float(goals.mean())) < 0.05
    assert torch.equal(family.task_features(tasks[0]), torch.tensor(tasks[0]["goal"], dtype=torch.float32))


def test_nav2d_gymnasium_env_matches_the_batch():
    gymnasium = pytest.importorskip("gymnasium")
    env = gymnasium.make("fewshot/Nav2D-v0", horizon=5).unwrapped
    task = env.sample_tasks(1, seed=1)[0]
    env.set_task(task)
    batch = Nav2D(horizon=5).make([task], 1)
    obs, _ = env.reset(seed=0)
    assert np.array_equal(obs, batch.reset()[0].numpy())
    for t in range(5):
        action = np.array([0.2, -0.05], dtype=np.float32)
        obs, reward, terminated, truncated, _ = env.step(action)
        b_obs, b_reward, b_done, _ = batch.step(torch.tensor(action)[None])
        assert np.allclose(obs, b_obs[0].numpy()) and math.isclose(reward, float(b_reward[0]), rel_tol=1e-6)
        assert not terminated and truncated == (t == 4) == bool(b_done[0])


# -- returns, GAE and the baseline -------------------------------------------------------------------------
def test_discounted_returns_and_gae_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.allclose(discounted_returns(rewards, 0.5), torch.tensor([[2.75, 3.5, 3.0]]))
    values = torch.tensor([[0.5, 1.0, 1.5]])
    # delta = [1 + .5*1 - .5, 2 + .5*1.5 - 1, 3 - 1.5] = [1, 1.75, 1.5]; A_t = delta_t + .25 A_{t+1}
    assert torch.allclose(gae(rewards, values, 0.5, 0.5), torch.tensor([[1.53125, 2.125, 1.5]]))
    assert torch.allclose(gae(rewards, values, 0.5, 1.0), discounted_returns(rewards, 0.5) - values)
    dones = torch.tensor([[False, True, False, True]])
    assert torch.allclose(discounted_returns(torch.ones(1, 4), 1.0, dones), torch.tensor([[2.0, 1.0, 2.0, 1.0]]))


def test_linear_baseline_is_ridge_least_squares():
    g = torch.Generator().manual_seed(0)
    obs, returns = torch.randn(4, 7, 3, generator=g), torch.randn(4, 7, generator=g)
    reg = 1e-5
    x = baseline_features(obs).reshape(28, -1).numpy()
    assert x.shape[1] == 2 * 3 + 4
    augmented = np.vstack([x, math.sqrt(reg) * np.eye(x.shape[1])])
    target = np.concatenate([returns.reshape(-1).numpy().astype(np.float64), np.zeros(x.shape[1])])
    w = np.linalg.lstsq(augmented, target, rcond=None)[0]
    assert np.allclose(linear_baseline(obs, returns, reg).reshape(-1).numpy(), x @ w, atol=1e-4)


def test_advantages_are_normalised_per_task():
    g = torch.Generator().manual_seed(1)
    traj = Trajectories(torch.randn(6, 5, 2, generator=g), torch.zeros(6, 5, 2), torch.randn(6, 5, generator=g),
                        torch.zeros(6, 5), torch.zeros(6, 5, dtype=torch.bool), None, episodes=3)
    adv = advantages(traj).view(2, -1)
    assert torch.allclose(adv.mean(1), torch.zeros(2), atol=1e-5) and torch.allclose(adv.std(1), torch.ones(2))


# -- the policy and its gradients ------------------------------------------------------------------------------
class Constant(nn.Module):
    """A policy whose mean and log-std are parameters: the REINFORCE gradient has a closed form."""

    def __init__(self):
        super().__init__()
        self.mu, self.log_std = nn.Parameter(torch.tensor([0.3])), nn.Parameter(torch.tensor([-0.5]))

    def forward(self, obs):
        shape = (*obs.shape[:-1], 1)
        return self.mu.expand(shape), self.log_std.expand(shape)


def test_policy_gradient_matches_the_exact_gradient_of_a_gaussian_bandit():
    """One-step MDP, reward -(a - g)^2: J = -((mu - g)^2 + sigma^2), dJ/dmu = -2(mu - g), dJ/dlog_std = -2 sigma^2.
    The inner loss is -mean(log pi(a) * A), so its gradient estimates -grad J."""
    policy, goal, n = Constant(), 0.8, 400_000
    learner = RLLearner(policy, Nav2D())
    g = torch.Generator().manual_seed(0)
    actions = (policy.mu + policy.log_std.exp() * torch.randn(n, 1, 1, generator=g)).detach()
    rewards = -(actions[..., 0] - goal) ** 2
    traj = Trajectories(torch.zeros(n, 1, 1), actions, rewards, torch.zeros(n, 1), torch.ones(n, 1, dtype=torch.bool),
                        None, episodes=n)
    grads = torch.autograd.grad(learner.inner_loss(learner.params(), traj, rewards), list(policy.parameters()))
    sigma2 = math.exp(-1.0)
    assert torch.allclose(-grads[0], torch.tensor([-2 * (0.3 - goal)]), rtol=0.02)
    assert torch.allclose(-grads[1], torch.tensor([-2 * sigma2]), rtol=0.02)


def test_log_prob_and_kl_match_torch_distributions():
    g = torch.Generator().manual_seed(2)
    m0, s0, m1, s1, a = (torch.randn(5, 3, generator=g) for _ in range(5))
    expected = Normal(m0, s0.exp()).log_prob(a).sum(-1)
    assert torch.allclose(log_prob(m0, s0, a), expected, atol=1e-5)
    kl = torch.distributions.kl_divergence(Normal(m0, s0.exp()), Normal(m1, s1.exp())).sum(-1)
    assert torch.allclose(kl_divergence(m0, s0, m1, s1), kl, atol=1e-5)


def _sampled_meta_batch(algo: str):
    config = tiny(algo)
    torch.manual_seed(0)
    learner = build_learner(config)
    source = config.domain.train_tasks(config)
    learner.training_tasks(source)
    batch = stack_episodes([source[i] for i in range(2)])
    return learner, learner.sample_meta_batch(batch)


def _independent_post_loss(learner, data, t, theta):
    """MAML's post-adaptation surrogate of task ``t`` written out with torch.distributions and autograd."""
    names = list(dict(learner.policy.named_parameters()))
    params = dict(zip(names, theta))

    def dist(p, obs):
        mean, log_std = torch.func.functional_call(learner.policy, p, (obs,))
        return Normal(mean, log_std.exp())

    for traj, adv in data.inner[t]:
        inner = -(dist(params, traj.obs).log_prob(traj.actions).sum(-1) * adv).mean()
        grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
        params = {n: p - learner.inner_lr * gr for (n, p), gr in zip(params.items(), grads)}
    post = data.post[t]
    ratio = torch.exp(dist(params, post.obs).log_prob(post.actions).sum(-1) - post.log_probs)
    return -(ratio * data.post_adv[t]).mean()


def test_maml_trpo_meta_gradient_matches_an_independent_second_order_implementation():
    learner, data = _sampled_meta_batch("maml-trpo")
    params = list(learner.policy.parameters())
    loss, kl = learner.surrogate(data, 2, second_order=True)
    ours = torch.autograd.grad(loss, params)
    theirs = torch.autograd.grad(sum(_independent_post_loss(learner, data, t, params) for t in range(2)) / 2, params)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    first_order = torch.autograd.grad(learner.surrogate(data, 2, second_order=False)[0], params)
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(ours, first_order))   # the 2nd-order term counts
    assert abs(float(kl.detach())) < 1e-6          # before the update, the adapted policy is the one that sampled


def test_trpo_kl_hessian_matches_finite_differences_and_the_adapted_fisher_in_the_limit():
    learner, data = _sampled_meta_batch("maml-trpo")
    params = list(learner.policy.parameters())
    flat = torch.nn.utils.parameters_to_vector(params).detach()
    v = torch.randn(flat.numel(), generator=torch.Generator().manual_seed(3))
    v = v / v.norm()
    hv = learner.kl_hessian(data, 2)(v)

    def grad_kl(x):
        torch.nn.utils.vector_to_parameters(x, params)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(learner.surrogate(data, 2, True)[1], params)])

    eps = 1e-4                # small: wider steps cross the policy's ReLU kinks
    finite = (grad_kl(flat + eps * v) - grad_kl(flat - eps * v)) / (2 * eps)
    torch.nn.utils.vector_to_parameters(flat, params)
    assert float((hv - finite).norm() / finite.norm()) < 0.02
    learner.fisher = "adapted"
    assert float((learner.kl_hessian(data, 2)(v) - hv).norm() / hv.norm()) > 1e-3     # the inner step's Jacobian
    learner.inner_lr = 1e-7                                   # no adaptation: both are the policy's Fisher
    adapted = learner.kl_hessian(data, 2)(v)
    learner.fisher = "exact"
    assert torch.allclose(adapted, learner.kl_hessian(data, 2)(v), rtol=1e-4, atol=1e-6)


def test_promp_inner_step_has_the_reinforce_gradient_and_the_lvc_hessian():
    learner, data = _sampled_meta_batch("promp")
    traj, adv = data.inner[0][0]
    params = learner.params()
    names = list(params)
    learner.lvc = True
    lvc = torch.autograd.grad(learner.inner_loss(params, traj, adv), list(params.values()), create_graph=True)
    learner.lvc = False
    plain = torch.autograd.grad(learner.inner_loss(params, traj, adv), list(params.values()), create_graph=True)
    for a, b in zip(lvc, plain):
        assert torch.allclose(a, b, atol=1e-6)
    v = [torch.ones_like(p) for p in params.values()]
    h_lvc = torch.autograd.grad(sum((a * u).sum() for a, u in zip(lvc, v)), list(params.values()))
    h_plain = torch.autograd.grad(sum((a * u).sum() for a, u in zip(plain, v)), list(params.values()))
    assert names and any(not torch.allclose(a, b, atol=1e-5) for a, b in zip(h_lvc, h_plain))


def test_conjugate_gradient_solves_a_small_spd_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a, b = m @ m.T + 0.5 * torch.eye(6, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    assert torch.allclose(conjugate_gradient(lambda v: a @ v, b, iters=6), torch.linalg.solve(a, b), atol=1e-8)


# -- sampling -------------------------------------------------------------------------------------------------------
def test_a_tasks_episodes_do_not_depend_on_the_rest_of_the_batch():
    torch.manual_seed(0)
    learner = RLLearner(GaussianPolicy(2, 2, [8]), Nav2D(horizon=6))
    tasks = Nav2D().sample_tasks(3, seed=0)
    theta = {k: v.detach() for k, v in learner.params().items()}
    together = learner.sample([theta] * 3, tasks, [11, 12, 13], episodes=2)
    alone = learner.sample(theta, tasks[1:2], [12], episodes=2)
    # equal up to the rounding of a batched matrix product
    assert torch.allclose(together.task(1).actions, alone.actions, atol=1e-6)
    assert torch.allclose(together.task(1).rewards, alone.rewards, atol=1e-6)


def test_adaptation_returns_have_a_column_per_step_and_are_deterministic():
    torch.manual_seed(0)
    learner = RLLearner(GaussianPolicy(2, 2, [16, 16]), Nav2D(horizon=10))
    tasks = Nav2D().sample_tasks(4, seed=5)
    first = learner.adaptation_returns(tasks, 2, episodes=5, seed=1)["return"]
    assert first.shape == (4, 3) and torch.equal(first, learner.adaptation_returns(tasks, 2, 5, 1)["return"])


def test_the_column_after_adaptation_is_sampled_from_eval_episodes():
    """Column ``steps`` is the mean return of ``eval_episodes`` trajectories of the adapted policies, those a direct
    call of ``sample`` with that column's seeds gives; the columns before it are over ``episodes``."""
    torch.manual_seed(0)
    learner = RLLearner(GaussianPolicy(2, 2, [8]), Nav2D(horizon=6))
    tasks, seed = Nav2D().sample_tasks(3, seed=2), 1
    sample, counts = learner.sample, []

    def counting(params, tasks, seeds, episodes):
        counts.append(episodes)
        return sample(params, tasks, seeds, episodes)

    learner.sample = counting
    got = learner.adaptation_returns(tasks, 1, episodes=5, seed=seed, eval_episodes=3)["return"]
    assert counts == [5, 3] and got.shape == (3, 2)
    seeds = [[rollout_seed(seed, k, j) for k in range(3)] for j in (0, 1)]
    theta = {k: v.detach() for k, v in learner.params().items()}
    with torch.no_grad():
        before = sample([theta] * 3, tasks, seeds[0], 5)
        adv = learner.task_advantages(before)
        adapted = [learner.adapt_task(theta, before.task(t), adv[t], None, False) for t in range(3)]
        after, after_5 = (sample(adapted, tasks, seeds[1], n).task_returns() for n in (3, 5))
    torch.testing.assert_close(got[:, 0], before.task_returns(), rtol=0, atol=1e-6)
    torch.testing.assert_close(got[:, 1], after, rtol=0, atol=1e-6)
    assert not torch.allclose(got[:, 1], after_5, atol=1e-3)          # 5 episodes would give another figure
    counts.clear()
    assert torch.equal(learner.adaptation_returns(tasks, 1, 5, seed)["return"][:, 1], after_5) and counts == [5, 5]
    counts.clear()
    learner.adaptation_returns(tasks, 0, 5, seed, eval_episodes=3)          # no step: only the evaluation column
    assert counts == [3]
    with pytest.raises(ValueError, match="eval_episodes must be >= 1"):
        learner.adaptation_returns(tasks, 1, 5, seed, eval_episodes=0)


# -- training, resume and the command --------------------------------------------------------------------------------
@pytest.mark.parametrize("algo", ["maml-trpo", "promp", "pretrained"])
def test_resumed_run_equals_an_uninterrupted_one(tmp_path, algo):
    straight, parts = tmp_path / "straight", tmp_path / "parts"
    trainer_for(tiny(algo), straight, progress=False).run()
    trainer_for(tiny(algo, steps=2), parts, progress=False).run()
    from fewshot.runs import run_config
    trainer_for(run_config(parts, {}, {"steps": 4}), parts, progress=False).run()
    from fewshot.checkpoint import read_checkpoint
    a, _ = read_checkpoint(straight / "checkpoints", "last")
    b, _ = read_checkpoint(parts / "checkpoints", "last")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    lines = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert lines(straight) == lines(parts)


def test_command_trains_and_scores_nav2d(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--algo", "oracle", "--dataset", "nav2d", "--steps", "2", "--meta-batch", "2",
                 "--trajectories", "2", "--horizon", "5", "--eval-tasks", "3", "--set", "val_every=2",
                 "--set", "val_episodes=2", "--set", "policy_hidden=[8]", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "test.json").read_text())["tasks"] == 3
    capsys.readouterr()
    assert main(["eval", str(out), "--inner-steps", "2", "--seed", "4", "--episodes", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"metric", "mean", "ci95", "tasks", "adapt_steps", "before", "before_ci95", "returns", "dataset", "env",
            "algo", "versions", "seed", "trajectories", "horizon"} <= set(result)
    assert result["metric"] == "return" and result["adapt_steps"] == 2 and result["tasks"] == 3
    assert [r["steps"] for r in result["returns"]] == [0, 1, 2] and result["returns"][-1]["mean"] == result["mean"]
    assert result["before"] == result["returns"][0]["mean"] and result["dataset"] == "nav2d"
    assert result["algo"] == "oracle" and "torch" in result["versions"]
    assert main(["eval", str(out), "--inner-steps", "2", "--seed", "4", "--episodes", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result      # fixed by --seed
