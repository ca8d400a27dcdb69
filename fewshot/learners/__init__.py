"""Model mapping: learners that turn a support set into a predictor.

Each learner file registers its builder by name (:mod:`fewshot.registry`); importing this package registers
them all. A new learner is one file here and one import line below.
"""

# importing a learner file registers its learners (fewshot.registry)
from fewshot.learners import bmaml, finetune, forest, gradient, matching  # noqa: F401
from fewshot.learners import dkt  # noqa: F401
from fewshot.learners import protonet, relation, siamese  # noqa: F401
from fewshot.learners import maml_rl, rl_baselines  # noqa: F401
from fewshot.learners import rl2  # noqa: F401
from fewshot.learners.base import JointEmbeddingLearner, Learner, SupportSet
from fewshot.learners.bmaml import BMAML
from fewshot.learners.dkt import DKT
from fewshot.learners.finetune import FineTune
from fewshot.learners.forest import RandomForest
from fewshot.learners.gradient import ANIL, FOMAML, MAML, GradientLearner, MetaSGD, Reptile
from fewshot.learners.matching import MatchingNet
from fewshot.learners.protonet import MahalanobisProtoNet, ProtoNet
from fewshot.learners.relation import RelationModule, RelationNet, relation_encoder
from fewshot.learners.siamese import SiameseNet

__all__ = ["Learner", "JointEmbeddingLearner", "SupportSet", "GradientLearner", "MAML", "FOMAML", "ANIL", "MetaSGD",
           "Reptile", "BMAML", "DKT", "ProtoNet", "MahalanobisProtoNet", "MatchingNet", "RelationNet", "RelationModule",
           "relation_encoder", "SiameseNet", "FineTune", "RandomForest"]
