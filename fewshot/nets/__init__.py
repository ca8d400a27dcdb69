"""Feature mapping: backbones that embed inputs."""

from fewshot.nets.conv4 import Conv4
from fewshot.nets.mlp import MLP
from fewshot.nets.molecules import FingerprintMLP, GraphNet

__all__ = ["Conv4", "MLP", "FingerprintMLP", "GraphNet"]
