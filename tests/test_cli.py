"""The ``fewshot`` command: train + eval round trip, JSON output, and bad input (exit 2, one line, no traceback)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fewshot.checkpoint import tensor_path

from conftest import cli, tiny_protonet
from fewshot.cli import main
from fewshot.runs import trainer_for

TINY = {"meta_batch": 2, "shots": 5, "queries": 5, "val_every": 2, "val_episodes": 3, "test_episodes": 3,
        "checkpoint_every": 2, "log_every": 1, "eval_inner_steps": 1}
SUMMARY_KEYS = {"metric", "mean", "ci95", "episodes", "dataset", "split", "ways", "shots"}




@pytest.fixture(scope="module")
def sinusoid_run(tmp_path_factory) -> Path:
    """A 3-step MAML sinusoid run trained through ``main``."""
    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    run = root / "run"
    code = main(["train", "--config", str(config), "--algo", "maml", "--dataset", "sinusoid", "--steps", "3",
                 "--out", str(run), "--no-progress"])
    assert code == 0
    return run


@pytest.fixture(scope="module")
def protonet_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cli-proto") / "run"
    trainer_for(tiny_protonet(steps=1), run, progress=False).run()
    return run


def test_train_writes_a_run_and_a_test_summary(sinusoid_run):
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.json", "checkpoints/best.json"):
        assert (sinusoid_run / name).is_file(), name
    assert tensor_path(sinusoid_run / "checkpoints", "last").is_file()
    cfg = yaml.safe_load((sinusoid_run / "config.yaml").read_text())
    assert cfg["train"]["steps"] == 3 and cfg["learner"]["algo"] == "maml"              # flags
    assert cfg["train"]["val_episodes"] == 3                                             # file
    assert cfg["learner"]["inner_lr"] == 0.01                                            # recipe
    summary = json.loads((sinusoid_run / "test.json").read_text())
    assert set(summary) == SUMMARY_KEYS and summary["episodes"] == 3


def test_eval_json_is_the_last_stdout_line(sinusoid_run, capsys):
    code, out, err = cli(["eval", sinusoid_run, "--json", "--episodes", "4"], capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert isinstance(result, dict) and set(result) == SUMMARY_KEYS
    assert result["metric"] == "mse" and result["episodes"] == 4 and result["dataset"] == "sinusoid"
    assert result["split"] == "sinusoid" and result["ways"] == 1 and result["shots"] == 5
    assert result["mean"] > 0 and result["ci95"] >= 0
    # repeatable (fixed episodes), and --inner-steps changes the result
    code, out2, _ = cli(["eval", sinusoid_run, "--json", "--episodes", "4"], capsys)
    assert json.loads(out2.strip().splitlines()[-1]) == result
    code, out3, _ = cli(["eval", sinusoid_run, "--json", "--episodes", "4", "--inner-steps", "0"], capsys)
    assert code == 0 and json.loads(out3.strip().splitlines()[-1])["mean"] != result["mean"]


def test_eval_json_on_omniglot(protonet_run, capsys):
    code, out, err = cli(["eval", protonet_run, "--json", "--episodes", "3", "--ways", "3"], capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["metric"] == "accuracy" and 0.0 <= result["mean"] <= 1.0
    assert result["split"] == "background:test" and result["ways"] == 3 and result["dataset"] == "omniglot"


def test_eval_within_one_alphabet_draws_each_episode_from_one_held_out_alphabet(protonet_run, capsys):
    from fewshot.runs import load_learner

    _, cfg = load_learner(protonet_run)
    _, mixed = cfg.domain.test_tasks(cfg, ways=5)
    _, within = cfg.domain.test_tasks(cfg, ways=5, args=argparse.Namespace(within_alphabet=True))
    groups = within.data.class_groups
    alphabets = [{groups[c] for c in within.episode_classes(i)} for i in range(20)]
    assert all(len(a) == 1 for a in alphabets) and set().union(*alphabets) <= set(cfg.test_alphabets)
    assert any(len({groups[c] for c in mixed.episode_classes(i)}) > 1 for i in range(20))
    code, out, err = cli(["eval", protonet_run, "--json", "--episodes", "3", "--ways", "5", "--within-alphabet"],
                         capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["within_alphabet"] is True and set(result) == SUMMARY_KEYS | {"within_alphabet"}


def fewshot_script() -> str:
    script = Path(sys.executable).parent / "fewshot"
    return str(script) if script.is_file() else shutil.which("fewshot")


def test_console_script(sinusoid_run, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([fewshot_script(), "eval", str(sinusoid_run), "--json", "--episodes", "3"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result) == SUMMARY_KEYS and result["episodes"] == 3
    bad = subprocess.run([fewshot_script(), "eval", str(tmp_path / "missing")], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "missing" in bad.stderr


def assert_bad_input(code, out, err, *needles):
    assert code == 2, (code, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("fewshot ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


ARGPARSE_BAD = [(["train", "--algo", "maml2"], "maml2"), (["train", "--ways", "0"], "--ways"),
                (["train", "--lr", "-1"], "--lr"), (["eval"], "run_dir")]


@pytest.mark.parametrize("argv, needle", ARGPARSE_BAD)
def test_bad_flags_exit_2_without_traceback(argv, needle, capsys, tmp_path):
    code, out, err = cli(argv + ["--out", tmp_path / "r"] if argv[0] == "train" else argv, capsys)
    assert code == 2 and "Traceback" not in err
    assert any(line.startswith("fewshot") and "error" in line and needle in line for line in err.splitlines())
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, needle", ARGPARSE_BAD)
def test_bad_flags_print_one_line(argv, needle, capsys):
    assert_bad_input(*cli(argv, capsys), needle)


def test_impossible_ways_on_omniglot(tmp_path, capsys):
    run = tmp_path / "r"
    code, out, err = cli(["train", "--ways", "100", "--steps", "1", "--out", run, "--no-progress"], capsys)
    assert_bad_input(code, out, err, "ways=100")
    assert not (run / "checkpoints").exists()


def test_eval_of_a_missing_run_dir(tmp_path, capsys):
    assert_bad_input(*cli(["eval", tmp_path / "nope"], capsys), "nope", "config.yaml")


def test_eval_of_a_run_dir_without_checkpoints(sinusoid_run, tmp_path, capsys):
    run = tmp_path / "copy"
    run.mkdir()
    shutil.copy(sinusoid_run / "config.yaml", run / "config.yaml")
    assert_bad_input(*cli(["eval", run, "--json"], capsys), "checkpoint")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_bad_input(*cli(["eval", empty], capsys), "empty")


def test_config_with_an_unknown_key(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("algo: maml\nmeta_batchsize: 4\n")
    code, out, err = cli(["train", "--config", config, "--out", tmp_path / "r", "--no-progress"], capsys)
    assert_bad_input(code, out, err, "meta_batchsize")
    assert not (tmp_path / "r").exists()


def test_data_root_without_the_evaluation_zip(tmp_path, capsys, protonet_run):
    empty = tmp_path / "data"
    empty.mkdir()
    code, out, err = cli(["train", "--split", "evaluation", "--data-root", empty, "--steps", "1",
                          "--out", tmp_path / "r", "--no-progress"], capsys)
    assert_bad_input(code, out, err, "images_evaluation", "--data-root")
    code, out, err = cli(["eval", protonet_run, "--split", "evaluation", "--data-root", empty, "--episodes", "2"],
                         capsys)
    assert_bad_input(code, out, err, "images_evaluation")


def test_resume_with_a_different_algo(sinusoid_run, capsys):
    before = tensor_path(sinusoid_run / "checkpoints", "last").read_bytes()
    code, out, err = cli(["train", "--algo", "fomaml", "--dataset", "sinusoid", "--out", sinusoid_run,
                          "--no-progress"], capsys)
    assert_bad_input(code, out, err, "algo", "maml", "fomaml")
    assert tensor_path(sinusoid_run / "checkpoints", "last").read_bytes() == before


def test_eval_with_other_ways_than_a_maml_head(sinusoid_run, capsys):
    assert_bad_input(*cli(["eval", sinusoid_run, "--ways", "5"], capsys), "--ways 1")


@pytest.mark.parametrize("algo", ["anil", "metasgd", "reptile", "fomaml", "matching", "matching-fce", "relation",
                                  "siamese", "finetune"])
def test_every_algorithm_trains_and_evaluates_on_omniglot(algo, tmp_path, capsys):
    """Each learner runs end to end through the CLI: train (2 steps), checkpoint, reload, eval --json."""
    config = tmp_path / "tiny.yaml"
    gradient = algo in ("anil", "metasgd", "reptile", "fomaml")
    options = {"val_episodes": 2, "test_episodes": 2, "meta_batch": 2, "train_ways": None if gradient else 5,
               "queries": 2, "train_queries": 2}
    if algo == "finetune":
        options["batch_size"] = 16                 # the options of its learner section, which only it has
    if gradient or algo == "finetune":
        options["eval_inner_steps"] = 2
    config.write_text(yaml.safe_dump(options))
    run = tmp_path / "run"
    code, out, err = cli(["train", "--config", config, "--algo", algo, "--steps", "2", "--out", run,
                          "--no-progress"], capsys)
    assert code == 0, err
    assert "test accuracy" in out
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["learner"]["algo"] == algo and (algo != "finetune" or saved["learner"]["pretrain_classes"] > 500)
    code, out, err = cli(["eval", run, "--episodes", "3", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["episodes"] == 3 and 0.0 <= result["mean"] <= 1.0


def test_eval_of_a_sinusoid_run_refuses_a_split(sinusoid_run, capsys):
    code, out, err = cli(["eval", sinusoid_run, "--split", "evaluation", "--episodes", "2"], capsys)
    assert_bad_input(code, out, err, "sinusoid", "--split")


def test_train_flags_for_within_alphabet_episodes(tmp_path, capsys):
    """--within-alphabet, --train-ways and --train-queries reach the run's config."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"val_episodes": 2, "test_episodes": 2, "val_every": 1}))
    run = tmp_path / "run"
    code, out, err = cli(["train", "--config", config, "--algo", "protonet", "--steps", "1", "--ways", "20",
                          "--queries", "1", "--train-ways", "20", "--train-queries", "2", "--within-alphabet",
                          "--out", run, "--no-progress"], capsys)
    assert code == 0, err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    data = saved["data"]
    assert (data["within_alphabet"], data["train_ways"], data["train_queries"], data["ways"]) == (True, 20, 2, 20)


# -- the sectioned config: --print-config, --set, --version -------------------------------------------------


def test_version_prints_the_package_version(capsys):
    import fewshot

    code, out, err = cli(["--version"], capsys)
    assert code == 0 and out == f"fewshot {fewshot.__version__}\n", (out, err)


def print_config(argv: list, capsys) -> dict:
    code, out, err = cli(["train", "--print-config", *argv], capsys)
    assert code == 0, err
    return yaml.safe_load(out)


def test_print_config_is_sectioned_yaml_that_config_reads_back(tmp_path, capsys):
    from fewshot.config import load_yaml, resolve

    run = tmp_path / "r"
    printed = print_config(["--algo", "maml", "--dataset", "sinusoid", "--steps", "7", "--out", run], capsys)
    assert list(printed) == ["data", "model", "learner", "train", "eval"]
    assert printed["learner"]["algo"] == "maml" and printed["data"]["dataset"] == "sinusoid"
    assert printed["model"] == {"net": "mlp"} and printed["train"]["steps"] == 7
    assert printed["learner"]["inner_lr"] == 0.01                  # the recipe
    assert not (tmp_path / "r").exists()                           # printing trains nothing
    path = tmp_path / "printed.yaml"
    path.write_text(yaml.safe_dump(printed, sort_keys=False))
    assert resolve(load_yaml(path), {}).to_sections() == printed
    assert print_config(["--config", path, "--out", run], capsys) == printed
    omniglot = print_config(["--algo", "protonet", "--out", run], capsys)       # and an Omniglot run's
    path.write_text(yaml.safe_dump(omniglot, sort_keys=False))
    assert print_config(["--config", path, "--out", run], capsys) == omniglot


def test_set_reaches_the_config_between_the_file_and_the_flags(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  lr: 0.5\n  meta_batch: 9\n  val_every: 3\n")
    argv = ["--config", config, "--algo", "maml", "--dataset", "sinusoid", "--out", tmp_path / "r"]
    printed = print_config([*argv, "--set", "lr=0.01", "--set", "train.meta_batch=2"], capsys)
    assert (printed["train"]["lr"], printed["train"]["meta_batch"], printed["train"]["val_every"]) == (0.01, 2, 3)
    printed = print_config([*argv, "--set", "lr=0.01", "--lr", "0.02", "--set", "multi_step_loss=true",
                            "--set", "learner.inner_steps=3"], capsys)
    assert printed["train"]["lr"] == 0.02                          # flags beat --set
    assert printed["learner"]["multi_step_loss"] is True and printed["learner"]["inner_steps"] == 3   # YAML values
    printed = print_config([*argv, "--set", "eval_inner_steps=4", "--inner-steps", "2"], capsys)
    assert (printed["learner"]["eval_inner_steps"], printed["learner"]["inner_steps"]) == (4, 2)


@pytest.mark.parametrize("pairs, message", [
    (["learner.lr=0.1"], "fewshot train: error: --set learner.lr: option 'lr' belongs in section train, not learner"),
    (["lr"], "fewshot train: error: --set lr: give KEY=VALUE, e.g. --set lr=0.01"),
    (["trian.lr=0.1"], "fewshot train: error: --set trian.lr: unknown section 'trian'; did you mean 'train'?"),
    (["meta_batchsize=4"], "fewshot train: error: --set: unknown option 'meta_batchsize'; did you mean 'meta_batch'?"),
    (["lr=fast"], "fewshot train: error: --set: option 'lr' must be float, got 'fast'"),
    (["inner_lr=0.1"], "fewshot train: error: inner_lr does not apply to protonet on omniglot with net conv4-pool; "
                       "drop it"),
])
def test_bad_set_is_refused_in_one_line(pairs, message, tmp_path, capsys):
    argv = ["train", "--out", tmp_path / "r", "--no-progress"]
    for pair in pairs:
        argv += ["--set", pair]
    code, out, err = cli(argv, capsys)
    assert_bad_input(code, out, err)
    assert err.strip() == message
    assert not (tmp_path / "r").exists()


def test_eval_refuses_the_flags_of_another_domain(sinusoid_run, protonet_run, capsys):
    code, out, err = cli(["eval", sinusoid_run, "--within-alphabet"], capsys)
    assert_bad_input(code, out, err)
    assert err.strip() == "fewshot eval: error: --within-alphabet does not apply to sinusoid runs; drop it"
    code, out, err = cli(["eval", protonet_run, "--support-size", "16"], capsys)
    assert_bad_input(code, out, err)
    assert err.strip() == "fewshot eval: error: --support-size does not apply to omniglot runs; drop it"
    code, out, err = cli(["eval", sinusoid_run, "--benchmark", "omniglot-lake-runs"], capsys)
    assert_bad_input(code, out, err, "--benchmark does not apply to sinusoid runs; drop it")
