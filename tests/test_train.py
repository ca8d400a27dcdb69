"""The meta-training loop: run directory, exact resume, time limit, learning, non-finite losses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_protonet, tiny_sinusoid
from fewshot.checkpoint import read_checkpoint, tensor_path
from fewshot.config import RunConfig
from fewshot.runs import load_learner, load_run_config, run_config, trainer_for
from fewshot.train import RunError, Trainer


def train(config: RunConfig, run_dir: Path):
    return trainer_for(config, run_dir, progress=False).run()


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def params(learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.state_dict().items()}


def assert_params_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_run_directory_layout(tmp_path):
    run = tmp_path / "run"
    config = tiny_sinusoid()
    result = train(config, run)
    assert result.step == 6 and not result.stopped_early and result.best_val is not None
    for name in ("last", "best"):
        assert (run / "checkpoints" / f"{name}.json").is_file(), name
        assert tensor_path(run / "checkpoints", name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert not [p for p in run.rglob("*") if p.suffix in (".pt", ".pkl", ".pth")]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved == config.to_sections() and saved["train"]["steps"] == 6 and saved["learner"]["algo"] == "maml"
    assert load_run_config(run) == config
    records = metrics(run)
    assert all(isinstance(r["step"], int) and r["split"] in ("train", "val") for r in records)
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == [1, 2, 3, 4, 5, 6]                       # log_every=1
    assert all("loss" in r and "mse" in r for r in records if r["split"] == "train")
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in val] == [3, 6] and all("mse" in r and "ci95" in r for r in val)
    last = json.loads((run / "checkpoints" / "last.json").read_text())
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert last["state"]["step"] == 6
    assert best["state"]["best_val"] == min(r["mse"] for r in val) == result.best_val
    # the learner that load_learner rebuilds is the trained one (best = last when step 6 is best)
    learner, cfg = load_learner(run, "last")
    assert_params_identical(params(learner), params(result.learner))


def test_omniglot_protonet_run_records_holdout(tmp_path):
    run = tmp_path / "proto"
    result = train(tiny_protonet(), run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert len(saved["data"]["val_alphabets"]) == 3 and len(saved["data"]["test_alphabets"]) == 5
    assert not set(saved["data"]["val_alphabets"]) & set(saved["data"]["test_alphabets"])
    val = [r for r in metrics(run) if r["split"] == "val"]
    assert [r["step"] for r in val] == [1, 2] and all(0.0 <= r["accuracy"] <= 1.0 for r in val)
    assert result.best_val == max(r["accuracy"] for r in val)
    for name in ("last", "best"):
        tensors, meta = read_checkpoint(run / "checkpoints", name)
        assert any(k.startswith("model/encoder.") for k in tensors)


def test_resume_equals_an_uninterrupted_run(tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    straight = train(tiny_sinusoid(steps=6), full)
    first = train(tiny_sinusoid(steps=3), split)
    assert first.step == 3
    resumed_config = run_config(split, {}, {"steps": 6})
    assert resumed_config.steps == 6
    resumed = train(resumed_config, split)
    assert resumed.step == 6
    assert_params_identical(params(resumed.learner), params(straight.learner))
    assert metrics(split) == metrics(full)
    assert resumed.best_val == straight.best_val
    for name in ("last", "best"):
        ta, ma = read_checkpoint(full / "checkpoints", name)
        tb, mb = read_checkpoint(split / "checkpoints", name)
        assert ma["state"] == mb["state"]
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta if k != "rng/torch")


class SimulatedCrash(RuntimeError):
    pass


def crash_during_step_4(monkeypatch) -> None:
    """Make every trainer raise ``SimulatedCrash`` inside its fourth update (until ``monkeypatch.undo()``)."""
    real_step = Trainer._train_step

    def crash_at_step_4(self):
        if self.step == 3:
            raise SimulatedCrash("killed during step 4")
        return real_step(self)
    monkeypatch.setattr(Trainer, "_train_step", crash_at_step_4)


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    straight = train(tiny_sinusoid(steps=6), full)
    crash_during_step_4(monkeypatch)
    with pytest.raises(SimulatedCrash):
        train(tiny_sinusoid(steps=6), crashed)
    monkeypatch.undo()
    assert read_checkpoint(crashed / "checkpoints", "last")[1]["state"]["step"] == 2   # checkpoint_every=2
    assert max(r["step"] for r in metrics(crashed)) == 3                                # logged past it
    resumed = train(run_config(crashed, {}, {}), crashed)
    assert resumed.step == 6
    assert_params_identical(params(resumed.learner), params(straight.learner))
    assert metrics(crashed) == metrics(full)


def test_resume_with_changed_options_is_refused(tmp_path):
    run = tmp_path / "run"
    train(tiny_sinusoid(steps=2), run)
    with pytest.raises(RunError, match="algo"):
        run_config(run, {}, {"algo": "fomaml"})
    with pytest.raises(RunError, match="inner_lr"):
        run_config(run, {"inner_lr": 0.5}, {})
    assert run_config(run, {}, {"steps": 4, "algo": "maml"}).steps == 4     # same value / resumable change


def test_time_limit_stops_early_and_keeps_checkpoints(tmp_path):
    run = tmp_path / "run"
    result = train(tiny_sinusoid(steps=50, time_limit=1e-9), run)
    assert result.stopped_early and result.step == 0
    for name in ("last", "best"):
        assert tensor_path(run / "checkpoints", name).is_file()
        assert read_checkpoint(run / "checkpoints", name)[1]["state"]["step"] == 0
    assert [r["split"] for r in metrics(run)] == ["val"] and result.best_val is not None
    # and the run resumes to completion from there
    resumed = train(run_config(run, {}, {"time_limit": 1e6}), run)
    assert resumed.step == 50 and not resumed.stopped_early


def test_a_run_the_clock_stops_between_validations_validates_where_it_stopped(tmp_path, monkeypatch):
    """The steps after the last validation count: the stopped step is validated and may become the best."""
    import fewshot.train as train_module

    clock = iter(range(10**6))
    monkeypatch.setattr(train_module.time, "monotonic", lambda: float(next(clock)))   # one second per call
    run = tmp_path / "run"
    result = train(tiny_sinusoid(steps=50, val_every=4, time_limit=6.5), run)
    assert result.stopped_early and 0 < result.step < 50 and result.step % 4 != 0
    vals = [r["step"] for r in metrics(run) if r["split"] == "val"]
    assert vals[-1] == result.step and vals[:-1] == list(range(4, result.step, 4))


def test_meta_training_improves_sinusoid_regression(tmp_path):
    cfg = tiny_sinusoid(steps=150, meta_batch=4, lr=0.01, shots=10, queries=10, eval_inner_steps=5,
                        val_every=1000, val_episodes=20, checkpoint_every=1000)
    trainer = trainer_for(cfg, tmp_path / "run", progress=False)
    before = trainer.validate()
    result = trainer.run()
    after = trainer.validate()
    assert after.values != before.values
    assert after.mean < 0.7 * before.mean, (before.mean, after.mean)
    losses = [r["loss"] for r in metrics(tmp_path / "run") if r["split"] == "train"]
    assert len(losses) == 150
    assert sum(losses[-30:]) / 30 < sum(losses[:30]) / 30
    assert result.best_val == after.mean


def test_non_finite_loss_raises_naming_the_step(tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = trainer_for(tiny_sinusoid(steps=6), run, progress=False)
    nan_loss_at(trainer, 3, monkeypatch)
    with pytest.raises(FloatingPointError, match="step 3"):
        trainer.run()
    assert read_checkpoint(run / "checkpoints", "last")[1]["state"]["step"] == 2    # the last good one


def test_huge_inner_lr_raises_floating_point_error(tmp_path):
    with pytest.raises(FloatingPointError, match="step 1"):
        train(tiny_sinusoid(inner_lr=1e30), tmp_path / "run")


def nan_loss_at(trainer: Trainer, step: int, monkeypatch) -> None:
    """Make the meta-loss of step ``step`` (1-based) NaN."""
    real = trainer.learner.meta_backward

    def patched(batch, **kwargs):
        out = real(batch, **kwargs)
        return {**out, "loss": float("nan")} if trainer.step == step - 1 else out
    monkeypatch.setattr(trainer.learner, "meta_backward", patched)


def test_non_finite_loss_can_skip_the_meta_batch(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    train(tiny_sinusoid(steps=6), run)                                      # a clean reference run
    reference = [r for r in metrics(run) if r["split"] == "train"]
    with pytest.raises(FloatingPointError, match="step 3"):                 # the default stops at step 3 ...
        trainer = trainer_for(tiny_sinusoid(steps=6), tmp_path / "stopped", progress=False)
        nan_loss_at(trainer, 3, monkeypatch)
        trainer.run()
    resumed = run_config(tmp_path / "stopped", {}, {"on_nonfinite": "skip"})   # ... and resumes with skip
    trainer = trainer_for(resumed, tmp_path / "stopped", progress=False)
    nan_loss_at(trainer, 3, monkeypatch)
    result = trainer.run()
    assert result.step == 6 and result.skipped == 1
    assert "step 3: the meta-loss became nan; skipped this meta-batch" in capsys.readouterr().out
    records = [r for r in metrics(tmp_path / "stopped") if r["split"] == "train"]
    assert [r["step"] for r in records] == [1, 2, 4, 5, 6]                 # no record of the skipped step
    assert records[:2] == reference[:2] and records[2] != reference[3]      # step 3 made no update
    tensors, meta = read_checkpoint(tmp_path / "stopped" / "checkpoints", "last")
    assert meta["state"]["skipped"] == 1
    adam_steps = {int(v) for k, v in tensors.items() if k.endswith("/step")}
    assert adam_steps == {5}                                                 # 6 steps, one without an update
    assert all(torch.isfinite(p).all() for p in result.learner.parameters())


def test_non_finite_gradient_stops_naming_the_step(tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = trainer_for(tiny_sinusoid(steps=6), run, progress=False)
    real = trainer.learner.meta_backward

    def inf_grad_at_step_5(batch, **kwargs):
        out = real(batch, **kwargs)
        if trainer.step == 4:
            next(trainer.learner.parameters()).grad[0] = float("inf")
        return out
    monkeypatch.setattr(trainer.learner, "meta_backward", inf_grad_at_step_5)
    with pytest.raises(FloatingPointError, match=r"meta-gradient became non-finite .* at step 5.*step 4"):
        trainer.run()
    assert read_checkpoint(run / "checkpoints", "last")[1]["state"]["step"] == 4


def test_bf16_precision_autocasts_the_training_step_only(tmp_path):
    trainer = trainer_for(tiny_protonet(steps=2, precision="bf16"), tmp_path / "run", progress=False)
    first_conv = next(m for m in trainer.learner.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    first_conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    trainer.run()
    assert torch.bfloat16 in seen and torch.float32 in seen            # training steps, then validation/test
    assert all(p.dtype == torch.float32 for p in trainer.learner.parameters())
    with pytest.raises(ValueError, match="precision must be float32, bf16 or auto"):
        tiny_protonet(precision="fp16")


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_device_runs_it_natively_and_is_recorded(tmp_path, monkeypatch,
                                                                                        native):
    import fewshot.train as train_module

    monkeypatch.setattr(train_module, "fast_bf16", lambda device: native)
    run = tmp_path / "run"
    trainer = trainer_for(tiny_protonet(steps=1, precision="auto"), run, progress=False)
    trainer.run()
    chosen = "bf16" if native else "float32"
    assert trainer.settings.precision == chosen
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["precision"] == chosen
    monkeypatch.setattr(train_module, "fast_bf16", lambda device: not native)    # another machine resumes it
    assert trainer_for(run_config(run, {}, {"steps": 2}), run, progress=False).run().step == 2


def test_fast_bf16_reads_the_cpu_flags(monkeypatch, tmp_path):
    import fewshot.devices as devices

    for flags, expected in (("fpu avx512f avx512_bf16 sse", True), ("fpu amx_bf16", True), ("fpu avx2 sse", False)):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor : 0\nflags : {flags}\n")
        monkeypatch.setattr(devices, "Path", lambda path, info=info: info)
        assert devices.fast_bf16("cpu") is expected
    assert devices.fast_bf16("meta") is False


def test_resume_restores_the_random_stream_that_training_draws_from(tmp_path, monkeypatch):
    """A training step that draws from torch's global RNG (as dropout or random augmentation would):
    the resumed run matches the uninterrupted one only if the checkpoint's RNG state is restored."""
    from fewshot.learners import GradientLearner

    real_loss = GradientLearner.episode_loss

    def noisy_loss(self, episode):
        loss, m = real_loss(self, episode)
        return loss * (1 + torch.rand(())), m
    monkeypatch.setattr(GradientLearner, "episode_loss", noisy_loss)
    full, split = tmp_path / "full", tmp_path / "split"
    straight = train(tiny_sinusoid(steps=6), full)
    train(tiny_sinusoid(steps=3), split)
    torch.rand(100)                                   # the interrupted process's stream moves on
    resumed = train(run_config(split, {}, {"steps": 6}), split)
    assert_params_identical(params(resumed.learner), params(straight.learner))


def test_grad_clip_bounds_the_meta_gradient_norm_of_every_update(tmp_path):
    trainer = trainer_for(tiny_protonet(steps=3, grad_clip=0.01), tmp_path / "run", progress=False)
    norms, step = [], trainer.optimizer.step

    def record_then_step(*args, **kwargs):
        grads = [p.grad for p in trainer.learner.parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return step(*args, **kwargs)

    trainer.optimizer.step = record_then_step
    trainer.run()
    assert len(norms) == 3 and all(n == pytest.approx(0.01, rel=1e-4) for n in norms)   # untrained: norm >> 0.01
    with pytest.raises(ValueError, match="grad_clip must be a finite number > 0"):
        tiny_protonet(grad_clip=0.0)


def test_ema_is_the_moving_average_of_the_weights_and_what_the_run_returns(tmp_path):
    """With ``ema: d`` the deployed weights follow e_1 = w_1, e_t = d e_(t-1) + (1 - d) w_t over the weights
    w_t after each update, recomputed here from the live weights; ``load_learner`` returns them, not w_t."""
    decay = 0.9
    trainer = trainer_for(tiny_protonet(steps=4, ema=decay), tmp_path / "run", progress=False)
    expected, step = None, trainer.optimizer.step

    def step_then_average(*args, **kwargs):
        nonlocal expected
        out = step(*args, **kwargs)
        live = params(trainer.learner)
        expected = live if expected is None else {k: decay * expected[k] + (1 - decay) * live[k] for k in live}
        return out

    trainer.optimizer.step = step_then_average
    result = trainer.run()
    deployed = params(result.learner)
    assert result.learner is not trainer.learner
    assert any(not torch.allclose(deployed[k], params(trainer.learner)[k]) for k in deployed)
    for k in deployed:
        torch.testing.assert_close(deployed[k], expected[k], rtol=1e-6, atol=1e-7)
    loaded, _ = load_learner(tmp_path / "run", "last")
    assert_params_identical(params(loaded), deployed)
    with pytest.raises(ValueError, match=r"ema must be a decay in \(0, 1\)"):
        tiny_protonet(ema=1.0)


def test_resume_with_ema_equals_an_uninterrupted_run(tmp_path):
    straight = train(tiny_protonet(steps=6, ema=0.8), tmp_path / "straight")
    split = tmp_path / "split"
    train(tiny_protonet(steps=3, ema=0.8), split)
    resumed = train(run_config(split, {}, {"steps": 6}), split)
    assert_params_identical(params(resumed.learner), params(straight.learner))
    assert resumed.best_val == straight.best_val


def test_lr_decay_halves_the_learning_rate_every_n_steps_also_after_a_resume(tmp_path):
    def learning_rates(config, run_dir):
        trainer = trainer_for(config, run_dir, progress=False)
        seen, step = [], trainer.optimizer.step

        def record_then_step(*args, **kwargs):
            seen.append(trainer.optimizer.param_groups[0]["lr"])
            return step(*args, **kwargs)

        trainer.optimizer.step = record_then_step
        trainer.run()
        return seen

    config = tiny_protonet(steps=3, lr=0.01, lr_decay=0.5, lr_decay_every=2)
    assert learning_rates(config, tmp_path / "run") == [0.01, 0.01, 0.005]
    assert learning_rates(run_config(tmp_path / "run", {}, {"steps": 5}), tmp_path / "run") == [0.005, 0.0025]
    with pytest.raises(ValueError, match=r"lr_decay must be in \(0, 1\]"):
        tiny_protonet(lr_decay=0.0)


def recorded_learning_rates(trainer) -> list[float]:
    """The rate of every update ``trainer.run()`` makes (read when Adam steps)."""
    seen, step = [], trainer.optimizer.step

    def record_then_step(*args, **kwargs):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        return step(*args, **kwargs)

    trainer.optimizer.step = record_then_step
    return seen


def test_cosine_schedule_anneals_over_the_steps_and_resumes_exactly(tmp_path, monkeypatch):
    import math

    config = tiny_protonet(steps=4, lr=0.01, lr_schedule="cosine", checkpoint_every=2)
    trainer = trainer_for(config, tmp_path / "full", progress=False)
    straight = recorded_learning_rates(trainer)
    trainer.run()
    assert straight == pytest.approx([0.01 * (1 + math.cos(math.pi * s / 4)) / 2 for s in range(4)])
    logged = [r["lr"] for r in metrics(tmp_path / "full") if r["split"] == "train"]
    assert logged == pytest.approx(straight[len(straight) - len(logged):])

    crash_during_step_4(monkeypatch)
    with pytest.raises(SimulatedCrash):
        trainer_for(tiny_protonet(steps=4, lr=0.01, lr_schedule="cosine", checkpoint_every=2),
                    tmp_path / "crashed", progress=False).run()
    monkeypatch.undo()
    resumed = trainer_for(run_config(tmp_path / "crashed", {}, {}), tmp_path / "crashed", progress=False)
    after = recorded_learning_rates(resumed)
    resumed.run()
    assert after == straight[2:]                     # the checkpoint of step 2 resumes the same schedule
    assert_params_identical(params(resumed.learner), params(trainer.learner))


def test_cosine_schedule_follows_the_clock_under_a_time_limit(tmp_path, monkeypatch):
    """A run the clock ends anneals by the clock: its last updates are made at a rate near 0, whatever
    ``steps`` says, and the progress it reached is checkpointed for a resume."""
    import fewshot.train as train_module

    clock = iter(range(10**6))
    monkeypatch.setattr(train_module.time, "monotonic", lambda: float(next(clock)))   # one second per call
    trainer = trainer_for(tiny_protonet(steps=10**6, lr=0.01, lr_schedule="cosine", time_limit=40.0),
                          tmp_path / "run", progress=False)
    seen = recorded_learning_rates(trainer)
    result = trainer.run()
    assert result.stopped_early and 3 < len(seen) < 40
    assert seen[0] == pytest.approx(0.01, rel=0.02) and all(a >= b for a, b in zip(seen, seen[1:]))
    assert seen[-1] < 0.01 * 0.05                     # nearly annealed when the clock ran out
    state = read_checkpoint(tmp_path / "run" / "checkpoints", "last")[1]["state"]
    assert 0.9 < state["progress"] <= 1.0


def test_progress_is_the_larger_of_steps_and_clock_and_resumes_from_where_it_was():
    from fewshot.train import TrainSettings

    by_steps = TrainSettings(steps=100)
    assert by_steps.progress(25, 0.0, 1e9) == 0.25                     # no time limit: the clock does not count
    timed = TrainSettings(steps=100, time_limit=60.0)
    assert timed.progress(10, 0.0, 30.0) == 0.5 and timed.progress(80, 0.0, 30.0) == 0.8
    assert timed.progress(10, 0.6, 30.0) == pytest.approx(0.8)      # resumed at 0.6: the rest over the new limit
    assert timed.progress(10, 0.0, 600.0) == 1.0
    with pytest.raises(ValueError, match="lr_schedule must be step or cosine"):
        TrainSettings(lr_schedule="linear").validate()
