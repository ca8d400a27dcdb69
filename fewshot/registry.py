"""Registries: learners, nets and domains by name.

A learner file registers a builder with :func:`register_learner`, a net file with :func:`register_net`, a
domain module with :func:`register_domain`; the ``fewshot`` command and :func:`fewshot.load` look names up
here and never branch on them. Each entry names the options it reads as a dataclass (its section of a run's
configuration: ``learner``, ``model`` or ``data``), so a run's ``config.yaml`` holds only what applies to it.

Adding a learner::

    @dataclass
    class MyOptions:
        temperature: float = 1.0

    @register_learner("mine", options=MyOptions)
    def build(options: MyOptions, context: BuildContext) -> Learner:
        return MyLearner(context.net(), options.temperature)

and one import line in ``fewshot/learners/__init__.py``.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

from torch import nn

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str], listing: str) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, else ``"; " + listing``."""
    close = difflib.get_close_matches(name, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; {listing}"


_generation = 0     # counts registrations, so that what is derived from the registries is derived anew


def generation() -> int:
    """How many entries have been added to or removed from any registry."""
    return _generation


class Registry(Generic[T]):
    """Entries of one kind by name, in registration order."""

    def __init__(self, kind: str):
        self.kind, self._entries = kind, {}

    def add(self, name: str, entry: T) -> T:
        global _generation
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        _generation += 1
        return entry

    def remove(self, name: str) -> None:
        """Unregister ``name`` (a plugin's tests clean up with it)."""
        global _generation
        self[name]
        del self._entries[name]
        _generation += 1

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}"
                             f"{did_you_mean(name, list(self), 'choose one of ' + ', '.join(self))}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self):
        return self._entries.items()


@dataclass(frozen=True)
class NoOptions:
    """An entry that reads no options."""


@dataclass
class BuildContext:
    """What a learner builder gets besides its options.

    Attributes:
        net: builds the run's net (its ``model`` section): ``net()`` an embedding network ``[B, ...] -> [B, D]``,
            ``net(out_features=N)`` one with an ``N``-wide linear head.
        net_options: the ``model`` section's options.
        ways: the ways of validation and test episodes (the width of a gradient learner's head).
        task: ``"classification"`` or ``"regression"``.
        input_shape: one example's shape, e.g. ``(1, 28, 28)``.
        seed: the run's seed.
        family: the task family of a meta-RL run (:class:`fewshot.rl.family.TaskFamily`; ``None`` otherwise).
    """

    net: Callable[..., nn.Module]
    net_options: Any
    ways: int
    task: str
    input_shape: tuple[int, ...]
    seed: int
    family: Any = None


@dataclass(frozen=True)
class LearnerSpec:
    """A registered learner.

    Attributes:
        build: ``build(options, context) -> Learner``.
        options: the dataclass of its ``learner`` section.
        tasks: the kinds of task it solves.
        nets: the only nets it can use (``None``: any net the domain offers).
        head: its net ends in a linear head of ``ways`` outputs, so training and test episodes have the same ways.
    """

    name: str
    build: Callable[[Any, BuildContext], nn.Module]
    options: type = NoOptions
    tasks: tuple[str, ...] = ("classification",)
    nets: tuple[str, ...] | None = None
    head: bool = False


@dataclass(frozen=True)
class NetSpec:
    """A registered net: ``build(options, input_shape, out_features) -> nn.Module`` and its ``model`` options."""

    name: str
    build: Callable[[Any, tuple[int, ...], int | None], nn.Module]
    options: type = NoOptions


LEARNERS: Registry[LearnerSpec] = Registry("algorithm")
NETS: Registry[NetSpec] = Registry("net")
DOMAINS: Registry[Any] = Registry("dataset")


def register_learner(name: str, *, options: type = NoOptions, tasks: tuple[str, ...] = ("classification",),
                     nets: tuple[str, ...] | None = None, head: bool = False):
    """Decorator: register ``build(options, context) -> Learner`` as learner ``name`` (see the module docstring)."""
    def register(build):
        LEARNERS.add(name, LearnerSpec(name, build, options, tasks, nets, head))
        return build
    return register


def register_net(name: str, *, options: type = NoOptions):
    """Decorator: register ``build(options, input_shape, out_features) -> nn.Module`` as net ``name``."""
    def register(build):
        NETS.add(name, NetSpec(name, build, options))
        return build
    return register


def register_domain(domain: T) -> T:
    """Register a domain object (:class:`fewshot.domains.base.Domain`) under its ``name``."""
    DOMAINS.add(domain.name, domain)
    return domain


def option_names(options: type) -> list[str]:
    return [f.name for f in dataclasses.fields(options)]
