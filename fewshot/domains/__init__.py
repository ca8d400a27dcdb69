"""Domains: one module per kind of data, each registered by name (:mod:`fewshot.registry`).

A domain is the only place that knows its data: its options, nets, recipes, task sources, flags and how its
runs are scored (:class:`~fewshot.domains.base.Domain`). A new domain is one module here and one import below.
"""

from fewshot.domains import images, molecules, omniglot, sinusoid  # noqa: F401  (registers)
from fewshot.domains import rl  # noqa: F401  (registers nav2d)
from fewshot.domains import locomotion, metaworld  # noqa: F401  (cheetah-vel/dir, Meta-World)
from fewshot.domains.base import Domain, EpisodeDomain, ImageDomain

__all__ = ["Domain", "EpisodeDomain", "ImageDomain"]
