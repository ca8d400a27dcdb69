"""RL²: the recurrent state across a trial's episodes, PPO's clipped loss, and training and scoring by the command."""

import json
import math

import pytest
import torch

from conftest import cli
from fewshot.config import resolve
from fewshot.learners.rl2 import RL2, GRUPolicy, ppo_loss
from fewshot.rl.nav2d import Nav2D
from fewshot.runs import train_run

TINY = dict(algo="rl2", dataset="nav2d", horizon=8, meta_batch=2, trials=2, trajectories=2, steps=2,
            inner_steps=1, eval_inner_steps=2, val_every=2, val_episodes=2, eval_tasks=3, checkpoint_every=1,
            log_every=1, gru_hidden=16, ppo_epochs=2, minibatches=2)


def learner(horizon: int = 6) -> RL2:
    torch.manual_seed(0)
    family = Nav2D(horizon)
    return RL2(GRUPolicy(family.obs_dim, family.act_dim, hidden=8), family)


def test_hidden_state_is_kept_across_episodes_and_reset_across_trials():
    rl2, h = learner(), 6
    tasks = Nav2D().sample_tasks(2, 0)
    trials = rl2.run_trials(tasks, [1, 2], trials=3, episodes=2)
    assert trials.inputs.shape == (6, 2 * h, 2 + 2 + 2) and trials.hidden.shape == (6, 2, 8)
    assert torch.equal(trials.hidden[:, 0], torch.zeros(6, 8))                  # a trial starts from zero
    # the state at episode 2's start is the GRU's after episode 1's inputs, not a fresh one
    with torch.no_grad():
        _, _, _, h1 = rl2.policy(trials.inputs[:, :h], rl2.policy.initial_state(6))
    torch.testing.assert_close(trials.hidden[:, 1], h1[0])
    assert trials.hidden[:, 1].abs().min() > 0
    # episode 2's first input carries episode 1's last action and reward and done = 1; a trial's first, zeros
    first2 = trials.inputs[:, h]
    torch.testing.assert_close(first2[:, 2:4], trials.actions[:, h - 1])
    torch.testing.assert_close(first2[:, 4], trials.rewards[:, h - 1])
    assert torch.equal(first2[:, 5], torch.ones(6)) and torch.equal(trials.inputs[:, 0, 2:], torch.zeros(6, 4))
    # PPO's recomputation over the whole trial reproduces the sampling policy's figures
    logp, values, _ = rl2.evaluate_actions(trials, torch.arange(6))
    torch.testing.assert_close(logp, trials.log_probs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(values, trials.values, rtol=1e-4, atol=1e-5)
    # a new trial starts afresh: the same seeds give the same trial
    again = rl2.run_trials(tasks, [1, 2], trials=3, episodes=2)
    torch.testing.assert_close(again.rewards, trials.rewards)


def test_what_the_policy_learnt_in_episode_1_changes_episode_2():
    """Episode 2's first action differs from what a fresh trial would do in the same state."""
    rl2 = learner()
    trials = rl2.run_trials(Nav2D().sample_tasks(1, 0), [3], trials=1, episodes=2)
    h = trials.horizon
    with torch.no_grad():
        fresh = rl2.policy(trials.inputs[:, h:h + 1], rl2.policy.initial_state(1))[0]
        carried = rl2.policy(trials.inputs[:, h:h + 1], trials.hidden[:, 1][None])[0]
    assert not torch.allclose(fresh, carried)


def test_ppo_clipped_loss_by_hand():
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.5, 0.5, 1.5, 0.5])).requires_grad_()
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss = ppo_loss(new, old, adv, clip_eps=0.2)
    # min(r A, clip(r) A): 1.2 (clipped), 0.5, -1.5, -0.8 (clipped); the loss is minus their mean
    assert float(loss.detach()) == pytest.approx(-(1.2 + 0.5 - 1.5 - 0.8) / 4)
    loss.backward()
    # clipped terms pass no gradient; d(-r A / 4)/d log r = -r A / 4 for the others
    torch.testing.assert_close(new.grad, torch.tensor([0.0, -0.5 / 4, 1.5 / 4, 0.0]))


def test_advantages_span_the_trial():
    """GAE runs across the episode boundary: the trial is the episode RL² optimises."""
    rl2 = learner(horizon=3)
    trials = rl2.run_trials(Nav2D().sample_tasks(1, 0), [0], trials=1, episodes=2)
    rl2.discount, rl2.gae_lambda = 0.9, 1.0
    adv, returns = rl2.advantages(trials)
    r = trials.rewards[0]
    expected = torch.tensor([sum(0.9 ** (k - t) * r[k] for k in range(t, 6)) for t in range(6)])
    torch.testing.assert_close(returns[0], expected, rtol=1e-5, atol=1e-5)


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    whole = train_run(resolve({}, {**TINY, "steps": 2}), tmp_path / "whole", progress=False)
    train_run(resolve({}, {**TINY, "steps": 1}), tmp_path / "part", progress=False)
    resumed = train_run(resolve({}, {**TINY, "steps": 2}), tmp_path / "part", progress=False)
    assert resumed.step == whole.step == 2
    for (name, a), (_, b) in zip(whole.learner.state_dict().items(), resumed.learner.state_dict().items()):
        assert torch.equal(a, b), name


def test_command_trains_and_scores_each_episode_of_a_trial(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", out, "--no-progress"]
    for key, value in TINY.items():
        args += [f"--{key.replace('_', '-')}", value] if key in ("algo", "dataset", "steps", "meta_batch",
                                                                  "horizon", "trajectories") \
            else ["--set", f"{key}={value}"]
    code, _, err = cli(args, capsys)
    assert code == 0, err
    test = json.loads((out / "test.json").read_text())
    assert test["algo"] == "rl2" and len(test["returns"]) == 3        # episodes 1, 2, 3 of a trial
    code, stdout, err = cli(["eval", out, "--inner-steps", "1", "--seed", "4", "--json"], capsys)
    assert code == 0, err
    res = json.loads(stdout.strip().splitlines()[-1])
    assert {"metric", "mean", "ci95", "tasks", "adapt_steps", "before", "dataset", "env"} <= set(res)
    assert res["metric"] == "return" and res["adapt_steps"] == 1 and res["tasks"] == 3
    assert [r["steps"] for r in res["returns"]] == [0, 1] and res["returns"][0]["mean"] == res["before"]
    assert all(math.isfinite(r["mean"]) and r["mean"] < 0 for r in res["returns"])


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["metaworld-ml10", "metaworld-ml45"])
def test_ml10_ml45_train_and_score_end_to_end(tmp_path, capsys, dataset):
    """A tiny budget through the command: building the benchmark, 2 meta-iterations
    of RL² on 10-step episodes, and Meta-World's protocol (13 episodes of 500 steps) on 1 meta-test and 1
    meta-train goal at the end of training."""
    pytest.importorskip("metaworld", reason="Meta-World needs the rl extra: pip install '.[rl]'")
    out = tmp_path / "run"
    code, _, err = cli(["train", "--dataset", dataset, "--algo", "rl2", "--steps", 2, "--meta-batch", 2,
                        "--horizon", 10, "--trajectories", 1, "--eval-tasks", 1, "--set", "trials=1",
                        "--set", "val_episodes=1", "--set", "gru_hidden=16", "--out", out, "--no-progress"], capsys)
    assert code == 0, err
    res = json.loads((out / "test.json").read_text())          # what fewshot eval RUN --json prints
    assert res["metric"] == "success_rate" and res["horizon"] == 500 and "meta_train" in res
    assert res["versions"]["metaworld"] == "3.1.1" and res["versions"]["metaworld_reward"] == "v2"
