"""Feature mapping: backbones that embed inputs."""

from fewshot.nets.conv4 import Conv4
from fewshot.nets.mlp import MLP
from fewshot.nets.molecules import FingerprintMLP, GraphNet
from fewshot.nets.resnet12 import ResNet12

__all__ = ["Conv4", "ResNet12", "MLP", "FingerprintMLP", "GraphNet"]
