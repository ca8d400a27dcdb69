"""Run configuration of the ``fewshot`` command: five sections, each owned and validated by what uses it.

::

    data:     the domain's options (fewshot/domains/), chosen by ``dataset``
    model:    the net's options (fewshot/nets/), chosen by ``net``
    learner:  the learner's options (fewshot/learners/), chosen by ``algo``
    train:    how it is trained (:class:`fewshot.train.TrainSettings`)
    eval:     how the run's own test is scored (:class:`EvalOptions`)

Every option has one name across the sections, so flags, ``--set key=value`` and flat files name an option
alone (``--set lr=0.01``; ``--set train.lr=0.01`` also works). Precedence, lowest first: each owner's defaults,
the domain's recipe for the learner (the papers' settings), a YAML file (``--config``), ``--set``, flags. An
option that does not apply to the run (``distort`` for a molecule run) is refused when given, and a run's
``config.yaml`` holds only what applies to it, in sections. A flat file, as older runs and configs wrote them,
is still read; an older run's options that do not apply to it are dropped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, get_type_hints

import yaml

import fewshot.domains  # noqa: F401  (registers the domains)
import fewshot.learners  # noqa: F401  (registers the learners and their nets)
import fewshot.nets  # noqa: F401  (registers the nets)
from fewshot.registry import DOMAINS, LEARNERS, NETS, NoOptions, did_you_mean, generation, option_names
from fewshot.train import TrainSettings

SECTIONS = ("data", "model", "learner", "train", "eval")
SELECTORS = {"dataset": "data", "net": "model", "algo": "learner"}
DEFAULT_ALGO, DEFAULT_DATASET = "protonet", "omniglot"
#: Options that may differ when a run is resumed (they do not change what is computed).
RESUMABLE_CHANGES = {"steps", "time_limit", "data_root", "test_episodes", "on_nonfinite"}


@dataclass
class EvalOptions:
    """The ``eval`` section: how ``fewshot train`` scores the run at its end."""

    test_episodes: int = 600

    def validate(self) -> None:
        if self.test_episodes < 1:
            raise ValueError(f"test_episodes must be >= 1, got {self.test_episodes}")


def schema() -> tuple[dict[str, str], dict[str, Any]]:
    """Every option's section and type hint, over every registered owner."""
    return _schema(generation())


@lru_cache(maxsize=1)
def _schema(generation: int) -> tuple[dict[str, str], dict[str, Any]]:
    owners = [("data", d.options) for _, d in DOMAINS.items()] + [("model", n.options) for _, n in NETS.items()] + \
        [("learner", s.options) for _, s in LEARNERS.items()] + [("train", TrainSettings), ("eval", EvalOptions)]
    sections: dict[str, str] = {"dataset": "data", "net": "model", "algo": "learner"}
    hints: dict[str, Any] = {"dataset": str, "net": str | None, "algo": str}
    for section, options in owners:
        for key, hint in get_type_hints(options).items():
            if sections.setdefault(key, section) != section:
                raise TypeError(f"option {key} is declared in sections {sections[key]} and {section}")
            hints.setdefault(key, hint)
    return sections, hints


def _base_type(hint: Any) -> type:
    if getattr(hint, "__origin__", None) is list:
        return list
    for t in (bool, int, float, str, list):
        if hint is t or t in getattr(hint, "__args__", ()):
            return t
    raise TypeError(hint)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_types(values: dict[str, Any], source: str) -> None:
    """Raise ``ValueError`` for an option no owner declares (with "did you mean") or a value of the wrong type."""
    sections, hints = schema()
    for key, value in values.items():
        if key not in hints:
            raise ValueError(f"{source}: unknown option {key!r}"
                             f"{did_you_mean(key, list(hints), 'valid options: ' + ', '.join(sorted(hints)))}")
        if value is None:
            if "None" not in str(hints[key]):
                raise ValueError(f"{source}: option {key!r} cannot be empty")
            continue
        expected = _base_type(hints[key])
        ok = (isinstance(value, expected) and not (expected is int and isinstance(value, bool))) or \
            (expected is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            hint = (" (YAML reads 1e-3 as text: write 1.0e-3 or 0.001)"
                    if expected is float and isinstance(value, str) and _is_number(value) else "")
            raise ValueError(f"{source}: option {key!r} must be {expected.__name__}, got {value!r}{hint}")
        if expected is float and isinstance(value, int):
            values[key] = float(value)


def flatten(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Options by name from a sectioned mapping (``{"train": {"lr": 0.01}}``) or a flat one (``{"lr": 0.01}``);
    an option under the wrong section is refused naming the right one."""
    if not any(isinstance(v, dict) for v in values.values()):     # no option's value is a mapping
        return dict(values)
    sections, _ = schema()
    flat: dict[str, Any] = {}
    for section, options in values.items():
        if section not in SECTIONS:
            listing = f"a config file has sections {', '.join(SECTIONS)} (or is one flat mapping)"
            raise ValueError(f"{source}: unknown section {section!r}{did_you_mean(section, list(SECTIONS), listing)}")
        if not isinstance(options, dict):
            raise ValueError(f"{source}: section {section!r} must hold a mapping of option: value")
        for key, value in options.items():
            if key in sections and sections[key] != section:
                raise ValueError(f"{source}: option {key!r} belongs in section {sections[key]}, not {section}")
            flat[key] = value
    return flat


def split_key(key: str) -> str:
    """``"train.lr"`` -> ``"lr"`` (checked to be in that section); ``"lr"`` -> ``"lr"``."""
    if "." not in key:
        return key
    section, _, name = key.partition(".")
    sections, _ = schema()
    if section not in SECTIONS:
        listing = f"sections are {', '.join(SECTIONS)}"
        raise ValueError(f"--set {key}: unknown section {section!r}{did_you_mean(section, list(SECTIONS), listing)}")
    if name in sections and sections[name] != section:
        raise ValueError(f"--set {key}: option {name!r} belongs in section {sections[name]}, not {section}")
    return name


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The options of a YAML config file (sectioned or flat), by name, each key and value type checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {path} is not valid YAML: {yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of option: value")
    flat = flatten(data, str(path))
    check_types(flat, source=str(path))
    return flat


def yaml_problem(error: Exception) -> str:
    """One line for a YAML (or text decoding) error: the problem and where it is."""
    mark = getattr(error, "problem_mark", None)
    if getattr(error, "problem", None) and mark is not None:
        return f"{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(error).split())


class RunConfig:
    """A run's configuration: five section objects (the owners' options dataclasses) and the three selectors
    ``dataset``, ``net`` (``None`` for a learner without one) and ``algo``.

    Options are read and written by name (``config.lr``, ``config.ways = 20``), whichever section holds them;
    an option that does not apply to the run raises ``AttributeError``.

    ``RunConfig(**options)``: the owners' defaults and ``options`` (no recipe; :func:`resolve` adds it); every
    option given must apply to the run, except those named in ``lenient``, which are dropped when they do not.
    """

    def __init__(self, *, lenient: frozenset[str] | set[str] = frozenset(), **values: Any):
        check_types(values, source="options")
        algo = values.pop("algo", DEFAULT_ALGO)
        dataset = values.pop("dataset", DEFAULT_DATASET)
        domain, spec = DOMAINS[dataset], LEARNERS[algo]
        net = self._pick_net(values.pop("net", None), "net" in lenient, domain, spec)
        owners = {"data": domain.options, "model": NETS[net].options if net else NoOptions,
                  "learner": spec.options, "train": TrainSettings, "eval": EvalOptions}
        given: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
        given["train"]["seed"] = 0          # the command's runs are always seeded
        for key, value in values.items():
            section = next((s for s, cls in owners.items() if key in option_names(cls)), None)
            if section is None:
                if key in lenient:
                    continue
                raise ValueError(f"{key} does not apply to {algo} on {dataset}"
                                 f"{f' with net {net}' if net else ''}; drop it")
            given[section][key] = value
        d = self.__dict__
        d["dataset"], d["net"], d["algo"] = dataset, net, algo
        d["sections"] = {section: owners[section](**given[section]) for section in SECTIONS}

    @staticmethod
    def _pick_net(net: str | None, lenient: bool, domain, spec) -> str | None:
        """The run's net: the learner's own when it has one (``spec.nets``; none for ``nets=()``), else the one
        given, else the domain's first."""
        if spec.nets is not None:
            if net is not None and net not in spec.nets and not lenient:
                raise ValueError(f"{spec.name} uses no net; drop net" if not spec.nets else
                                 f"{spec.name} builds its own encoder ({', '.join(spec.nets)}), not {net}: drop net")
            return net if net in spec.nets else (spec.nets[0] if spec.nets else None)
        if net is None:
            return domain.nets[0]
        NETS[net]      # an unknown net is refused naming the known ones
        return net

    # -- access by name ---------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        for section in self.__dict__.get("sections", {}).values():
            if hasattr(section, name):
                return getattr(section, name)
        if name in schema()[0]:
            raise AttributeError(f"{name} does not apply to {self.algo} on {self.dataset}")
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in SELECTORS:
            raise AttributeError(f"{name} chooses the run's sections; build a new config with replace({name}=...)")
        for section in self.sections.values():
            if name in option_names(type(section)):
                setattr(section, name, value)
                return
        raise AttributeError(f"{name} does not apply to {self.algo} on {self.dataset}")

    def applies(self, name: str) -> bool:
        """Whether option ``name`` is one of this run's."""
        return name in SELECTORS or any(name in option_names(type(s)) for s in self.sections.values())

    @property
    def domain(self):
        return DOMAINS[self.dataset]

    @property
    def learner_spec(self):
        return LEARNERS[self.algo]

    @property
    def test_inner_steps(self) -> int | None:
        """Test-time inner steps of learners that take them (``eval_inner_steps``, else ``inner_steps``)."""
        if not self.applies("inner_steps"):
            return None
        return self.inner_steps if self.eval_inner_steps is None else self.eval_inner_steps

    def flat(self) -> dict[str, Any]:
        """Every option of the run by name, selectors first."""
        values = {"algo": self.algo, "dataset": self.dataset, "net": self.net}
        for section in self.sections.values():
            values.update(dataclasses.asdict(section))
        return values

    def to_sections(self) -> dict[str, dict[str, Any]]:
        """The run's options in sections, as ``config.yaml`` holds them."""
        out = {}
        for name, section in self.sections.items():
            selector = {s: getattr(self, s) for s, owner in SELECTORS.items() if owner == name}
            out[name] = {**selector, **dataclasses.asdict(section)}
        return out

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with ``changes``; options of the old selectors that do not apply to new ones are dropped."""
        values = {**self.flat(), **changes}
        keep = {k for k in changes}
        return RunConfig(lenient=frozenset(set(values) - keep), **values).validate()

    # -- validation ---------------------------------------------------------------------------------------
    def validate(self) -> "RunConfig":
        """Raise ``ValueError`` naming the first impossible setting: each section's own checks, then whether
        learner, net and data fit together, then the domain's checks. Returns the config."""
        for name, section in self.sections.items():
            check_types(dict(dataclasses.asdict(section)), source="options")
            if hasattr(section, "validate"):
                section.validate()
        spec, domain = self.learner_spec, self.domain
        if domain.task not in spec.tasks:
            able = [n for n, s in LEARNERS.items() if domain.task in s.tasks]
            kind = "a classifier" if spec.tasks == ("classification",) else f"for {' and '.join(spec.tasks)} tasks"
            raise ValueError(f"{self.algo} is {kind}; {self.dataset} is {domain.task}: choose one of "
                             f"{', '.join(able)}")
        if spec.nets == () and domain.images:      # a learner without a net reads the inputs as feature vectors
            vectors = [n for n, d in DOMAINS.items() if not d.images and d.task in spec.tasks]
            raise ValueError(f"{self.algo} uses no net, so it needs feature vectors; {self.dataset} gives images: "
                             f"use it on {', '.join(vectors)}")
        exclusive = {n for _, s in LEARNERS.items() for n in (s.nets or ())}
        fits = [n for n in domain.nets if n not in exclusive]
        if self.net is not None and self.net not in domain.nets:
            if spec.nets:
                raise ValueError(f"{self.algo} builds its own encoder ({self.net}), which does not fit {self.dataset} "
                                 f"(its inputs take {' or '.join(fits)}): choose another learner")
            raise ValueError(f"net {self.net!r} does not fit dataset {self.dataset!r}: use {' or '.join(fits)}")
        if self.net in exclusive and not spec.nets:
            owner = next(n for n, s in LEARNERS.items() if self.net in (s.nets or ()))
            raise ValueError(f"net {self.net} is the {owner} learner's own encoder; {self.algo} needs another net")
        if spec.head and self.applies("train_ways") and self.train_ways not in (None, self.ways):
            raise ValueError(f"{self.algo} has a {self.ways}-way output head; train_ways must equal ways")
        domain.validate(self)
        return self

    def __repr__(self) -> str:
        return f"RunConfig({self.to_sections()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunConfig) and self.to_sections() == other.to_sections()


def recipe(algo: str, dataset: str) -> dict[str, Any]:
    """The papers' settings for ``algo`` on ``dataset`` (a copy; empty when there is none)."""
    return dict(DOMAINS[dataset].recipes.get(algo, {}))


#: Every recipe of the library's domains: ``RECIPES[(algo, dataset)]``.
RECIPES = {(algo, name): r for name, domain in DOMAINS.items() for algo, r in domain.recipes.items()}


def resolve(file_values: dict[str, Any], flag_values: dict[str, Any]) -> RunConfig:
    """Defaults < recipe < file < flags, validated. Options given in the file or as flags must apply to the
    run (but ``data_root``); recipe settings that do not apply (a shared recipe's inner steps for ProtoNet) are
    dropped."""
    merged = {**file_values, **{k: v for k, v in flag_values.items() if v is not None}}
    check_types(merged, source="options")
    algo, dataset = merged.get("algo", DEFAULT_ALGO), merged.get("dataset", DEFAULT_DATASET)
    LEARNERS[algo], DOMAINS[dataset]
    base = recipe(algo, dataset)
    values = {**base, **merged, "algo": algo, "dataset": dataset}
    # data_root says where data lives, not what is computed: dropped for data that is generated (sinusoid)
    return RunConfig(lenient=frozenset(set(base) - set(merged)) | {"data_root"}, **values).validate()

