"""Model mapping: learners that turn a support set into a predictor."""

from __future__ import annotations

from torch import nn

from fewshot.config import MOLECULE_DATASETS, RunConfig
from fewshot.learners.base import Learner
from fewshot.learners.finetune import FineTune
from fewshot.learners.forest import RandomForest
from fewshot.learners.gradient import GradientLearner, Reptile
from fewshot.learners.matching import MatchingNet
from fewshot.learners.protonet import ProtoNet
from fewshot.learners.relation import RelationModule, RelationNet, relation_encoder
from fewshot.learners.siamese import SiameseNet
from fewshot.nets import MLP, Conv4, FingerprintMLP, GraphNet, ResNet12

__all__ = ["Learner", "GradientLearner", "Reptile", "ProtoNet", "MatchingNet", "RelationNet", "SiameseNet",
           "FineTune", "RandomForest", "build_learner", "conv_net", "molecule_net"]


def molecule_net(config: RunConfig, out_features: int | None = None) -> nn.Module:
    """The molecule encoder of a run: ``[B, ...] -> [B, embedding_dim]`` (or ``[B, out_features]``)."""
    if config.net == "graph":
        return GraphNet(config.hidden, config.graph_layers, config.embedding_dim, out_features)
    if config.input_dim is None:
        raise ValueError("fp-mlp needs input_dim (the feature width), set when a run starts")
    return FingerprintMLP(config.input_dim, config.hidden, config.embedding_dim, out_features, config.dropout)


def conv_net(config: RunConfig, out_features: int | None = None) -> Conv4 | ResNet12:
    """The image encoder of a run, a Conv-4 or (``net: resnet12``) a ResNet-12:
    ``[B, 1, S, S] -> [B, embedding_dim]`` (or ``[B, out_features]``)."""
    if config.net == "resnet12":
        return ResNet12(channels=config.channels, out_features=out_features, norm=config.norm)
    return Conv4(hidden=config.channels, out_features=out_features, variant=config.net.removeprefix("conv4-"),
                 norm=config.norm, pooling=config.pooling, image_size=config.image_size)


def build_learner(config: RunConfig) -> Learner:
    """The learner and network a run config asks for (fresh, randomly initialised)."""
    if config.dataset in MOLECULE_DATASETS:
        return _molecule_learner(config)
    if config.algo == "protonet":
        return ProtoNet(conv_net(config), config.distance)
    if config.algo in ("matching", "matching-fce"):
        return MatchingNet(conv_net(config), fce=config.algo == "matching-fce")
    if config.algo == "relation":   # the paper's own encoder: 64x7x7 feature maps on 28x28 inputs
        return RelationNet(relation_encoder(norm=config.norm), RelationModule(spatial=config.image_size // 4,
                                                                              norm=config.norm))
    if config.algo == "siamese":
        return SiameseNet(conv_net(config), config.distance, margin=config.margin)
    if config.algo == "finetune":
        if config.pretrain_classes is None:
            raise ValueError("finetune needs pretrain_classes (the number of training classes), set when a run starts")
        return FineTune(conv_net(config), config.pretrain_classes,
                        head_steps=config.inner_steps, head_lr=config.inner_lr)
    if config.train_ways not in (None, config.ways):
        raise ValueError(f"{config.algo} has a {config.ways}-way output head; train_ways must equal ways")
    if config.dataset == "sinusoid":
        net, task = MLP(1, (40, 40), 1), "regression"
    else:
        net, task = conv_net(config, out_features=config.ways), "classification"
    return _gradient_learner(config, net, task)


def _gradient_learner(config: RunConfig, net: nn.Module, task: str = "classification") -> Learner:
    """MAML, first-order MAML, ANIL, Meta-SGD or Reptile over ``net``."""
    if config.algo == "reptile":
        return Reptile(net, config.inner_lr, config.inner_steps, task=task)
    return GradientLearner(net, config.inner_lr, config.inner_steps, task=task,
                           first_order=config.algo == "fomaml", head_only=config.algo == "anil",
                           learn_inner_lr=config.algo == "metasgd", multi_step_loss=config.multi_step_loss,
                           vectorize=config.vectorize)


def _molecule_learner(config: RunConfig) -> Learner:
    if config.algo == "forest":
        return RandomForest(config.trees, seed=config.seed)
    if config.algo == "protonet":
        return ProtoNet(molecule_net(config), config.distance)
    if config.algo == "matching":
        return MatchingNet(molecule_net(config))
    if config.algo == "siamese":
        return SiameseNet(molecule_net(config), config.distance, margin=config.margin)
    if config.algo == "finetune":
        if config.pretrain_classes is None:
            raise ValueError("finetune needs pretrain_classes (2 x the training tasks), set when a run starts")
        return FineTune(molecule_net(config), config.pretrain_classes, head_steps=config.inner_steps,
                        head_lr=config.inner_lr)
    return _gradient_learner(config, molecule_net(config, out_features=2))
