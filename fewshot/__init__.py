"""fewshot: meta-learning on PyTorch.

One protocol (``adapt`` / ``predict``), three mappings: nets embed inputs (feature mapping), task sources draw
episodes (task mapping), learners turn a support set into a predictor (model mapping); one trainer
(:func:`fit`), one evaluator (:func:`evaluate`)::

    tasks = fewshot.ClassificationTasks(data, ways=5, shots=1, queries=15, seed=0)
    learner = fewshot.MAML(my_module, inner_lr=0.4, inner_steps=1)
    result = fewshot.fit(learner, tasks, val_tasks=val, steps=500, meta_batch=32, lr=1e-3, out="runs/x")
    score = fewshot.evaluate(learner, test_tasks, episodes=600)
    learner = fewshot.load("runs/x", learner=fresh_learner)
"""

from importlib.metadata import PackageNotFoundError, version

from fewshot.calibration import fit_temperature
from fewshot.datasets.labelled import DatasetExamples, LabelledData
from fewshot.evaluate import EvalResult, evaluate
from fewshot.learners import (ANIL, BMAML, FOMAML, MAML, FineTune, Learner, MahalanobisProtoNet, MatchingNet, MetaSGD,
                              ProtoNet, RandomForest, RelationNet, Reptile, SiameseNet)
from fewshot.learners.temperature import TemperatureScaled
from fewshot.nets import MLP, Conv4, FingerprintMLP, GraphNet, ResNet12
from fewshot.registry import register_domain, register_learner, register_net
from fewshot.runs import load
from fewshot.tasks.episode import Episode, TaskBatch, stack_episodes
from fewshot.tasks.sampler import ClassificationTasks
from fewshot.tasks.sinusoid import SinusoidTasks
from fewshot.train import TrainResult, TrainSettings, fit

try:
    __version__ = version("fewshot")
except PackageNotFoundError:      # run from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "MAML", "FOMAML", "ANIL", "MetaSGD", "Reptile", "BMAML", "ProtoNet", "MahalanobisProtoNet",
           "MatchingNet", "RelationNet", "SiameseNet", "FineTune", "RandomForest", "Learner", "ClassificationTasks",
           "SinusoidTasks", "LabelledData", "DatasetExamples", "Episode", "TaskBatch", "stack_episodes", "fit",
           "TrainSettings", "TrainResult", "evaluate", "EvalResult", "load", "Conv4", "ResNet12", "MLP",
           "FingerprintMLP", "GraphNet", "register_learner", "register_net", "register_domain", "TemperatureScaled",
           "fit_temperature"]
