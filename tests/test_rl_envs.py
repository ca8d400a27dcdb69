"""The MuJoCo and Meta-World task families: seeded tasks, splits, rewards, horizons and the BatchEnv contract."""

import numpy as np
import pytest
import torch

gymnasium = pytest.importorskip("gymnasium", reason="the RL environments need the rl extra: pip install '.[rl]'")
pytest.importorskip("metaworld", reason="the Meta-World families need the rl extra: pip install '.[rl]'")

from fewshot.rl.metaworld import GOALS, MetaWorld, success_rates  # noqa: E402
from fewshot.rl.mujoco import Cheetah, CheetahEnv  # noqa: E402


@pytest.fixture(scope="module")
def reach():
    """ML1 reach-v3 with the goal in the observation, so Meta-World's scripted expert can solve it."""
    return MetaWorld("ML1", "reach-v3", goal_observable=True)


# -- tasks ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", [Cheetah("vel"), Cheetah("dir"), MetaWorld("ML1", "push-v3"),
                                    MetaWorld("ML10"), MetaWorld("ML45")], ids=lambda f: f.name)
def test_sample_tasks_is_deterministic(family):
    for split in ("train", "test"):
        assert family.sample_tasks(12, 3, split) == family.sample_tasks(12, 3, split)
        assert family.sample_tasks(12, 3, split) != family.sample_tasks(12, 4, split)


def test_cheetah_task_ranges():
    vel = [t["velocity"] for t in Cheetah("vel").sample_tasks(500, 0)]
    assert 0 <= min(vel) < 0.05 and 1.95 < max(vel) <= 2
    dirs = {t["direction"] for t in Cheetah("dir").sample_tasks(50, 0)}
    assert dirs == {-1, 1}
    assert Cheetah("vel").sample_tasks(5, 0, "train") != Cheetah("vel").sample_tasks(5, 0, "test")


def test_ml1_goals_cover_the_split_and_train_test_goals_are_disjoint(reach):
    for split in ("train", "test"):
        tasks = reach.sample_tasks(GOALS, 0, split)
        assert sorted(t["goal"] for t in tasks) == list(range(GOALS))          # each goal once
        assert {t["split"] for t in tasks} == {split}
    train = {tuple(reach.task_features(t).tolist()) for t in reach.all_tasks("train")}
    test = {tuple(reach.task_features(t).tolist()) for t in reach.all_tasks("test")}
    assert len(train) == len(test) == GOALS and not train & test


@pytest.mark.parametrize("benchmark,train,test", [("ML10", 10, 5), ("ML45", 45, 5)])
def test_ml10_ml45_classes_are_disjoint_and_sampled_evenly(benchmark, train, test):
    family = MetaWorld(benchmark)          # classes only: the goals are built on first make(), not here
    assert len(family.classes["train"]) == train and len(family.classes["test"]) == test
    assert not set(family.classes["train"]) & set(family.classes["test"])
    tasks = family.sample_tasks(2 * train, 0, "train")
    counts = {name: sum(t["env"] == name for t in tasks) for name in family.classes["train"]}
    assert set(counts.values()) == {2}
    assert {t["env"] for t in family.sample_tasks(10, 0, "test")} == set(family.classes["test"])


def test_bad_families_are_refused():
    with pytest.raises(ValueError, match="needs --env"):
        MetaWorld("ML1")
    with pytest.raises(ValueError, match="own classes"):
        MetaWorld("ML10", "reach-v3")
    with pytest.raises(ValueError, match="1 to 500 steps"):
        MetaWorld("ML1", "reach-v3", horizon=600)
    with pytest.raises(ValueError, match="unknown cheetah"):
        Cheetah("fast")
    with pytest.raises(ValueError, match="velocity"):
        Cheetah("vel").make([{"direction": 1}], 1, 0)


# -- rewards -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["vel", "dir"])
def test_cheetah_reward_is_the_papers_formula(kind):
    """Against gymnasium's own HalfCheetah-v5 (default control-cost weight 0.1) stepped with the same seed."""
    task = {"velocity": 1.3} if kind == "vel" else {"direction": -1}
    env, ref = CheetahEnv(kind, task), gymnasium.make("HalfCheetah-v5")
    o1, _ = env.reset(seed=5)
    o2, _ = ref.reset(seed=5)
    np.testing.assert_array_equal(o1, o2)
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.uniform(-1, 1, 6).astype(np.float32)
        _, r, _, _, _ = env.step(a)
        _, _, _, _, info = ref.step(a)
        ctrl = 0.05 * float(np.sum(a.astype(np.float64) ** 2))
        v = info["x_velocity"]
        expected = -abs(v - 1.3) - ctrl if kind == "vel" else -v - ctrl
        assert r == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_cheetah_batch_matches_single_envs_and_clips_actions():
    family = Cheetah("vel")
    tasks = family.sample_tasks(2, 0)
    env = family.make(tasks, 2, [11, 12])
    obs = env.reset()
    assert obs.shape == (4, 17) and obs.dtype == torch.float32 and env.batch == 4
    actions = torch.linspace(-3, 3, 24).view(4, 6)
    rewards = []
    for _ in range(3):
        obs2, r, done, info = env.step(actions)
        rewards.append(r)
    assert r.shape == (4,) and r.dtype == torch.float32 and done.dtype == torch.bool and info == {}
    # environment 3 = episode 1 of task 1: the same as a lone CheetahEnv seeded as the contract says
    from fewshot.tasks.seeding import derive_seed
    lone = CheetahEnv("vel", tasks[1])
    np.testing.assert_allclose(lone.reset(seed=derive_seed(12, 1))[0], obs[3].numpy(), rtol=1e-6)
    for k in range(3):
        _, lr, _, _, _ = lone.step(actions[3].clamp(-1, 1).numpy())
        assert lr == pytest.approx(float(rewards[k][3]), rel=1e-5)
    env.close()


def test_a_tasks_episodes_do_not_depend_on_the_other_tasks():
    family = Cheetah("dir")
    t0, t1 = family.sample_tasks(2, 1)
    alone = family.make([t0], 2, [7]).reset()
    together = family.make([t0, t1], 2, [7, 8]).reset()
    torch.testing.assert_close(alone, together[:2])
    assert not torch.equal(together[0], together[1])          # two episodes, two initial states


# -- horizon and reset ---------------------------------------------------------------------------

def test_episodes_end_at_the_horizon_and_reset_starts_new_ones(reach):
    short = reach.with_horizon(5)                               # shares the built goals and simulators
    assert short.pool is reach.pool and reach.horizon == 500
    short.goal_observable = False                               # the meta-learning benchmarks' setting
    env = short.make(short.sample_tasks(2, 0, "train"), 1, 0)
    obs = env.reset()
    assert obs.shape == (2, 39)
    np.testing.assert_array_equal(obs[:, 36:].numpy(), 0)     # the goal is hidden
    dones = [env.step(torch.zeros(2, 4))[2] for _ in range(5)]
    assert [bool(d.all()) for d in dones] == [False] * 4 + [True]
    with pytest.raises(ValueError, match="call reset"):
        env.step(torch.zeros(2, 4))
    torch.testing.assert_close(env.reset(), obs)               # Meta-World's reset is deterministic per goal
    env.close()


def test_metaworld_steps_past_its_500_step_limit_by_resetting(reach):
    """Meta-World raises past max_path_length; a BatchEnv resets every horizon, so a second episode runs."""
    env = reach.make(reach.sample_tasks(1, 0, "test"), 1, 0)
    for _ in range(2):
        env.reset()
        for _ in range(500):
            _, _, done, info = env.step(torch.zeros(1, 4))
        assert bool(done[0]) and info["success"].dtype == torch.bool
    env.close()


# -- the success protocol with Meta-World's scripted expert ------------------------------------

@pytest.mark.filterwarnings("ignore:Constant\\(s\\) may be too high")      # Meta-World's own policy code
def test_scripted_expert_succeeds_and_a_still_arm_does_not(reach):
    from metaworld.policies import SawyerReachV3Policy
    expert = SawyerReachV3Policy()
    tasks = reach.sample_tasks(2, 0, "test")
    env = reach.make(tasks, 2, 0)                                # 2 goals x 2 episodes
    obs, hit = env.reset(), torch.zeros(4, dtype=torch.bool)
    for t in range(150):
        act = torch.as_tensor(np.stack([expert.get_action(o) for o in obs.double().numpy()]), dtype=torch.float32)
        act[2:] = 0                                             # goal 2 stands still
        obs, _, _, info = env.step(act)
        hit |= info["success"]
    env.close()
    torch.testing.assert_close(success_rates(hit, 2), torch.tensor([1.0, 0.0]))


# -- the domains' results ------------------------------------------------------------------------

def test_cheetah_result_reports_the_paired_gain_of_the_per_task_returns():
    from fewshot.config import resolve
    from fewshot.runs import build_learner
    cfg = resolve({}, {"dataset": "cheetah-vel", "algo": "pretrained", "horizon": 5, "trajectories": 2})
    torch.manual_seed(0)
    learner = build_learner(cfg)
    res = cfg.domain.result(learner, cfg, 3, 1, 0)
    per_task = torch.tensor(res["per_task"])
    assert per_task.shape == (3, 2) and res["versions"]["env"] == "HalfCheetah-v5"
    assert res["before"] == pytest.approx(float(per_task[:, 0].mean()), rel=1e-5)
    assert res["mean"] == pytest.approx(float(per_task[:, 1].mean()), rel=1e-5)
    diff = per_task[:, 1] - per_task[:, 0]
    assert res["gain"][0]["mean"] == pytest.approx(float(diff.mean()), rel=1e-4, abs=1e-5)
    assert res["gain"][0]["ci95"] == pytest.approx(1.96 * float(diff.std()) / 3 ** 0.5, rel=1e-4)


def test_metaworld_scores_a_gradient_learner_on_3_evaluation_episodes():
    """The domain asks a gradient learner for 10 adaptation and 3 evaluation episodes, on the meta-test and the
    meta-train goals, and the result says so."""
    from fewshot.config import resolve
    cfg = resolve({}, {"dataset": "metaworld-ml1", "algo": "pretrained"})
    calls = []

    class Recorder(torch.nn.Module):
        family = None

        def adaptation_returns(self, tasks, steps, episodes, seed, *, eval_episodes=None):
            calls.append((len(tasks), steps, episodes, eval_episodes, self.family.horizon))
            return {"return": torch.zeros(len(tasks), steps + 1), "success": torch.ones(len(tasks), steps + 1)}

    res = cfg.domain.result(Recorder(), cfg, 2, 1, 0)
    assert calls == [(2, 1, 10, 3, 500)] * 2
    assert (res["adapt_episodes"], res["eval_episodes"], res["mean"], res["meta_train"]["mean"]) == (10, 3, 1, 1)
