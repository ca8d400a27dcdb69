"""Load a run of the ``fewshot`` command and classify new images with it.

    fewshot train --steps 300 --out runs/cli-protonet
    python examples/load_cli_run.py runs/cli-protonet
"""

import argparse

import fewshot
from fewshot.runs import load_run_config

parser = argparse.ArgumentParser()
parser.add_argument("run_dir")
args = parser.parse_args()

learner = fewshot.load(args.run_dir)            # rebuilt from the run's config.yaml, best checkpoint
config = load_run_config(args.run_dir)
_, tasks = config.domain.test_tasks(config)     # the run's held-out test episodes
print(f"{config.algo} on {config.dataset}:", fewshot.evaluate(learner, tasks, episodes=100))

episode = tasks[0]
learner.fit_support(episode.support_x, episode.support_y)
predicted = learner(episode.query_x).argmax(dim=1)
print("accuracy on one new episode:", float((predicted == episode.query_y).float().mean()))
