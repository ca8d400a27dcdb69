"""Meta-RL bad inputs: each is refused with one line naming the problem and the fix."""

from __future__ import annotations

import pytest
import torch

from fewshot.cli import main
from fewshot.config import resolve
from fewshot.rl.family import task_seeds
from fewshot.rl.nav2d import Nav2D
from fewshot.rl.sampling import rollout


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_supervised_learner_on_nav2d_names_the_rl_learners(capsys):
    err = _error(capsys, ["train", "--algo", "maml", "--dataset", "nav2d", "--print-config"])
    assert "nav2d is rl" in err and "maml-trpo" in err and "promp" in err


def test_rl_learner_on_images_is_refused(capsys):
    err = _error(capsys, ["train", "--algo", "maml-trpo", "--dataset", "omniglot", "--print-config"])
    assert "maml-trpo is for rl tasks" in err and "omniglot is classification" in err


@pytest.mark.parametrize("option, value, words", [
    ("trajectories", 0, "trajectories must be an integer >= 1"),
    ("horizon", 0, "horizon must be >= 1"),
    ("max_kl", -0.1, "max_kl > 0"),
    ("policy_hidden", [], "policy_hidden must be a list of layer widths"),
    ("policy_std", 0.0, "policy_std must be > 0"),
    ("discount", 1.5, "discount must be in (0, 1]"),
    ("fisher", "diagonal", "fisher must be exact"),
])
def test_bad_options_are_refused(option, value, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        resolve({}, {"algo": "maml-trpo", "dataset": "nav2d", option: value})


def test_promp_options_are_checked():
    with pytest.raises(ValueError, match="clip_eps in"):
        resolve({}, {"algo": "promp", "dataset": "nav2d", "clip_eps": 1.5})
    with pytest.raises(ValueError, match="max_kl does not apply to promp"):
        resolve({}, {"algo": "promp", "dataset": "nav2d", "max_kl": 0.01})


def test_nav2d_refuses_bad_tasks_splits_and_actions():
    family = Nav2D()
    with pytest.raises(ValueError, match=r"unknown split 'val'; nav2d has train, test"):
        family.sample_tasks(2, seed=0, split="val")
    with pytest.raises(ValueError, match=r"a nav2d task is \{'goal': \[x, y\]\}"):
        family.task_features({"velocity": 1.0})
    env = family.make(family.sample_tasks(2, seed=0), episodes=1)
    env.reset()
    with pytest.raises(ValueError, match=r"actions must have shape \[2, 2\]"):
        env.step(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="one seed per task"):
        task_seeds([1, 2, 3], 2)
    with pytest.raises(ValueError, match="cannot be split into 3 tasks"):
        rollout(family.make(family.sample_tasks(2, seed=0), 1), lambda o: (o, o), seeds=[1, 2, 3])


def test_eval_refuses_episode_flags_on_an_rl_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--algo", "pretrained", "--dataset", "nav2d", "--steps", "1", "--meta-batch", "1",
                 "--trajectories", "2", "--horizon", "3", "--eval-tasks", "2", "--set", "val_episodes=2",
                 "--set", "policy_hidden=[4]", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    err = _error(capsys, ["eval", str(out), "--ways", "5"])
    assert "--ways does not apply to nav2d runs; drop it" in err
    err = _error(capsys, ["eval", str(out), "--ensemble", str(out)])
    assert "an ensemble averages class probabilities" in err
