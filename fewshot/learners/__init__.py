"""Model mapping: learners that turn a support set into a predictor."""

from __future__ import annotations

from fewshot.config import RunConfig
from fewshot.learners.base import Learner
from fewshot.learners.gradient import GradientLearner, Reptile
from fewshot.learners.protonet import ProtoNet
from fewshot.nets import MLP, Conv4

__all__ = ["Learner", "GradientLearner", "Reptile", "ProtoNet", "build_learner"]


def build_learner(config: RunConfig) -> Learner:
    """The learner and network a run config asks for (fresh, randomly initialised)."""
    if config.algo == "protonet":
        return ProtoNet(Conv4(hidden=64, variant=config.net.removeprefix("conv4-"), norm=config.norm))
    if config.train_ways not in (None, config.ways):
        raise ValueError(f"{config.algo} has a {config.ways}-way output head; train_ways must equal ways")
    if config.dataset == "sinusoid":
        net, task = MLP(1, (40, 40), 1), "regression"
    else:
        net, task = Conv4(out_features=config.ways, variant=config.net.removeprefix("conv4-"),
                          norm=config.norm), "classification"
    if config.algo == "reptile":
        return Reptile(net, config.inner_lr, config.inner_steps, task=task)
    return GradientLearner(net, config.inner_lr, config.inner_steps, task=task,
                           first_order=config.algo == "fomaml", head_only=config.algo == "anil",
                           learn_inner_lr=config.algo == "metasgd", vectorize=config.vectorize)
