"""Episode samplers: ClassificationTasks (N-way K-shot Q-query) and SinusoidTasks."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Subset

from conftest import index_data
from fewshot.datasets.labelled import LabelledData
from fewshot.datasets.omniglot import load_omniglot
from fewshot.tasks.episode import Episode, TaskBatch, stack_episodes
from fewshot.tasks.sampler import ClassificationTasks
from fewshot.tasks.sinusoid import SinusoidTasks


def check_episode(ep: Episode, data: LabelledData, tasks: ClassificationTasks, index: int) -> None:
    """Every invariant of a classification episode drawn from ``index_data`` (x == example index)."""
    n, k, q = tasks.ways, tasks.shots, tasks.queries
    assert ep.support_x.shape == (n * k, 1) and ep.query_x.shape == (n * q, 1)
    assert ep.support_y.shape == (n * k,) and ep.query_y.shape == (n * q,)
    assert ep.support_y.dtype == torch.int64 and ep.query_y.dtype == torch.int64
    assert torch.equal(torch.bincount(ep.support_y, minlength=n), torch.full((n,), k))
    assert torch.equal(torch.bincount(ep.query_y, minlength=n), torch.full((n,), q))
    s_idx, q_idx = ep.support_x.flatten().long(), ep.query_x.flatten().long()
    assert torch.equal(ep.support_x.flatten(), s_idx.float())           # inputs are untouched indices
    all_idx = torch.cat([s_idx, q_idx])
    assert len(set(all_idx.tolist())) == n * (k + q), "an example is drawn twice (support/query overlap)"
    classes = tasks.episode_classes(index)
    assert len(set(classes)) == n
    for j in range(n):
        src = torch.cat([s_idx[ep.support_y == j], q_idx[ep.query_y == j]])
        assert set(data.y[src].tolist()) == {classes[j]}, f"label {j} mixes classes"


# --- ClassificationTasks on Omniglot ----------------------------------------------------------------------

def test_omniglot_episode_shapes_labels_and_range(omniglot_background):
    tasks = ClassificationTasks(omniglot_background, ways=5, shots=2, queries=3, seed=7)
    ep = tasks[11]
    assert ep.support_x.shape == (10, 1, 28, 28) and ep.query_x.shape == (15, 1, 28, 28)
    assert ep.support_y.shape == (10,) and ep.query_y.shape == (15,)
    assert ep.support_x.dtype == torch.float32
    assert torch.equal(torch.bincount(ep.support_y, minlength=5), torch.full((5,), 2))
    assert torch.equal(torch.bincount(ep.query_y, minlength=5), torch.full((5,), 3))
    assert sorted(set(ep.support_y.tolist())) == list(range(5))
    for x in (ep.support_x, ep.query_x):
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert float(x.max()) == 1.0        # ink (255) maps to exactly 1


def test_omniglot_support_and_query_disjoint_by_pixels(omniglot_background):
    tasks = ClassificationTasks(omniglot_background, ways=5, shots=5, queries=5, seed=3)
    for i in range(3):
        ep = tasks[i]
        s = {bytes(img.numpy().tobytes()) for img in ep.support_x}
        q = {bytes(img.numpy().tobytes()) for img in ep.query_x}
        assert len(s) == 25 and len(q) == 25
        assert not s & q


def test_omniglot_label_j_is_one_class(omniglot_background):
    data = omniglot_background
    tasks = ClassificationTasks(data, ways=4, shots=2, queries=2, seed=1)
    ep = tasks[5]
    classes = tasks.episode_classes(5)
    pixels = {}
    for c in classes:
        for img in data.x[data.y == c]:
            pixels[img.float().div(255).numpy().tobytes()] = c
    for x, y in [(ep.support_x, ep.support_y), (ep.query_x, ep.query_y)]:
        for img, label in zip(x, y.tolist()):
            assert pixels[img.numpy().tobytes()] == classes[label]


def test_uint8_inputs_become_float_in_unit_interval():
    x = torch.tensor([0, 1, 128, 254, 255, 7], dtype=torch.uint8).view(6, 1, 1, 1)
    data = LabelledData(x, torch.tensor([0, 0, 0, 1, 1, 1]), ("a", "b"), ("g", "g"))
    ep = ClassificationTasks(data, ways=2, shots=1, queries=2, seed=0)[0]
    values = torch.cat([ep.support_x.flatten(), ep.query_x.flatten()])
    assert values.dtype == torch.float32
    assert sorted(values.tolist()) == sorted((x.flatten().float() / 255.0).tolist())
    assert 0.0 in values.tolist() and 1.0 in values.tolist()
    # the source data is not modified in place by the conversion
    assert x.dtype == torch.uint8 and int(x.max()) == 255 and torch.equal(data.x, x)


# --- determinism ----------------------------------------------------------------------------------------

def episodes_equal(a: Episode | TaskBatch, b: Episode | TaskBatch) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("support_x", "support_y", "query_x", "query_y"))


def test_same_episode_across_instances(omniglot_background):
    a = ClassificationTasks(omniglot_background, 5, 1, 3, seed=42)
    b = ClassificationTasks(omniglot_background, 5, 1, 3, seed=42)
    for i in (0, 1, 999_999):
        assert episodes_equal(a[i], b[i])
    assert a.episode_classes(3) == b.episode_classes(3)
    # order of access does not matter: episode i depends on (seed, i) only
    later_first = [b[i] for i in (7, 6, 5)]
    assert all(episodes_equal(a[i], e) for i, e in zip((7, 6, 5), later_first))


def test_different_seeds_and_indices_differ(omniglot_background):
    a = ClassificationTasks(omniglot_background, 5, 1, 3, seed=0)
    b = ClassificationTasks(omniglot_background, 5, 1, 3, seed=1)
    assert not episodes_equal(a[0], b[0])
    assert a.episode_classes(0) != b.episode_classes(0)
    assert not episodes_equal(a[0], a[1])


def test_dataloader_with_workers_matches_direct_indexing():
    data = load_omniglot("background", image_size=28, alphabets=["Greek", "Latin", "Futurama"])
    tasks = ClassificationTasks(data, ways=5, shots=1, queries=2, seed=9, num_episodes=100)
    subset = Subset(tasks, list(range(20, 28)))
    loader = DataLoader(subset, batch_size=4, collate_fn=stack_episodes, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2
    for b, batch in enumerate(batches):
        assert isinstance(batch, TaskBatch) and batch.num_tasks == 4
        assert batch.support_x.shape == (4, 5, 1, 28, 28) and batch.query_y.shape == (4, 10)
        direct = stack_episodes([tasks[20 + 4 * b + t] for t in range(4)])
        assert episodes_equal(batch, direct)


def test_index_out_of_range():
    tasks = ClassificationTasks(index_data([5, 5, 5]), 2, 1, 1, num_episodes=3)
    assert len(tasks) == 3
    tasks[2]
    for bad in (3, -1):
        with pytest.raises(IndexError):
            tasks[bad]


# --- validation ------------------------------------------------------------------------------------------

def test_too_many_ways_names_the_numbers(omniglot_background):
    small = omniglot_background.select_groups(["Greek"])          # 24 characters
    with pytest.raises(ValueError) as err:
        ClassificationTasks(small, ways=25, shots=1, queries=1)
    msg = str(err.value)
    assert "25" in msg and str(small.num_classes) in msg and "ways" in msg


def test_too_many_shots_plus_queries_names_the_numbers(omniglot_background):
    with pytest.raises(ValueError) as err:
        ClassificationTasks(omniglot_background, ways=5, shots=5, queries=16)
    msg = str(err.value)
    assert "21" in msg and "20" in msg and "5" in msg and "16" in msg     # need 21, a class has 20


@pytest.mark.parametrize("kwargs", [dict(ways=1), dict(shots=0), dict(queries=0), dict(num_episodes=0),
                                    dict(ways=2.0)])
def test_bad_counts_refused(kwargs):
    args = dict(ways=2, shots=1, queries=1, num_episodes=5) | kwargs
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ClassificationTasks(index_data([4, 4, 4]), **args)


def test_ineligible_classes_are_never_drawn():
    data = index_data([2, 6, 1, 6, 6, 3])        # classes 1, 3, 4 have >= 4 examples
    tasks = ClassificationTasks(data, ways=3, shots=2, queries=2, seed=5)
    for i in range(10):
        assert sorted(tasks.episode_classes(i)) == [1, 3, 4]
        check_episode(tasks[i], data, tasks, i)


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=st.lists(st.integers(0, 9), min_size=2, max_size=8), ways=st.integers(2, 6),
       shots=st.integers(1, 4), queries=st.integers(1, 4), index=st.integers(0, 10**9 - 1),
       seed=st.integers(0, 2**31))
def test_property_episode_invariants(counts, ways, shots, queries, index, seed):
    data = index_data(counts)
    eligible = sum(c >= shots + queries for c in counts)
    if ways > len(counts) or eligible < ways:
        with pytest.raises(ValueError):
            ClassificationTasks(data, ways, shots, queries, seed=seed)
        return
    tasks = ClassificationTasks(data, ways, shots, queries, seed=seed)
    ep = tasks[index]
    check_episode(ep, data, tasks, index)
    assert episodes_equal(ep, ClassificationTasks(data, ways, shots, queries, seed=seed)[index])


# --- SinusoidTasks ---------------------------------------------------------------------------------------

def test_sinusoid_ranges_and_exact_targets():
    tasks = SinusoidTasks(shots=10, queries=15, seed=3)
    amps, phases = [], []
    for i in range(200):
        ep = tasks[i]
        amp, phase = tasks.task_parameters(i)
        amps.append(amp)
        phases.append(phase)
        assert 0.1 <= amp <= 5.0 and 0.0 <= phase <= math.pi
        assert ep.support_x.shape == (10, 1) and ep.support_y.shape == (10, 1)
        assert ep.query_x.shape == (15, 1) and ep.query_y.shape == (15, 1)
        for x, y in ((ep.support_x, ep.support_y), (ep.query_x, ep.query_y)):
            assert float(x.min()) >= -5.0 and float(x.max()) <= 5.0
            assert torch.equal(y, amp * torch.sin(x - phase))
            # and it agrees with float64 math to float32 precision
            ref = amp * torch.sin(x.double() - phase)
            assert torch.allclose(y.double(), ref, atol=1e-5)
    # the draws cover their ranges (not a constant or a narrow band)
    assert min(amps) < 0.5 and max(amps) > 4.5
    assert min(phases) < 0.3 and max(phases) > math.pi - 0.3


def test_sinusoid_determinism_by_seed_and_index():
    a, b, c = SinusoidTasks(5, 5, seed=1), SinusoidTasks(5, 5, seed=1), SinusoidTasks(5, 5, seed=2)
    assert episodes_equal(a[17], b[17])
    assert a.task_parameters(17) == b.task_parameters(17)
    assert not episodes_equal(a[17], c[17])
    assert not episodes_equal(a[17], a[18])
    # support and query points are different draws of the same task
    ep = a[0]
    assert not torch.equal(ep.support_x, ep.query_x)


def test_sinusoid_validation():
    with pytest.raises(ValueError, match="shots"):
        SinusoidTasks(0, 5)
    with pytest.raises(ValueError, match="queries"):
        SinusoidTasks(5, 0)
    with pytest.raises(IndexError):
        SinusoidTasks(5, 5, num_episodes=2)[2]


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(groups=st.lists(st.integers(1, 4), min_size=3, max_size=6), picked=st.data(), ways=st.integers(2, 4),
       shots=st.integers(1, 3), queries=st.integers(1, 3), within=st.booleans(), index=st.integers(0, 10**9 - 1),
       seed=st.integers(0, 2**31))
def test_property_classes_come_from_the_asked_split_only(groups, picked, ways, shots, queries, within, index, seed):
    """A split made of some groups (alphabets) of a dataset: every example of an episode is from those groups."""
    names = tuple(f"g{g}/c{c}" for g, size in enumerate(groups) for c in range(size))
    counts = [shots + queries + 1] * len(names)
    y = torch.repeat_interleave(torch.arange(len(names)), torch.tensor(counts))
    data = LabelledData(x=torch.arange(len(y), dtype=torch.float32).unsqueeze(1), y=y, class_names=names,
                        class_groups=tuple(n.split("/")[0] for n in names))
    split = picked.draw(st.lists(st.sampled_from(data.groups), min_size=1, unique=True), label="split")
    part = data.select_groups(split)
    if part.num_classes < ways or (within and max(groups[int(g[1:])] for g in split) < ways):
        with pytest.raises(ValueError):
            ClassificationTasks(part, ways, shots, queries, seed=seed, within_group=within)
        return
    tasks = ClassificationTasks(part, ways, shots, queries, seed=seed, within_group=within)
    ep = tasks[index]
    assert ep.support_x.shape == (ways * shots, 1) and ep.query_x.shape == (ways * queries, 1)
    drawn = torch.cat([ep.support_x, ep.query_x]).flatten().long()        # indices into the whole dataset
    groups_drawn = {data.class_groups[c] for c in data.y[drawn].tolist()}
    assert groups_drawn <= set(split)
    if within:
        assert len(groups_drawn) == 1
    assert not set(ep.support_x.flatten().tolist()) & set(ep.query_x.flatten().tolist())
    assert sorted(set(ep.support_y.tolist())) == sorted(set(ep.query_y.tolist())) == list(range(ways))
