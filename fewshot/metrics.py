"""Ranking metrics of binary tasks: ROC-AUC, average precision and FS-Mol's ΔAUPRC.

Scores are any real numbers, higher meaning "more likely active" (class 1); ties are
handled as scikit-learn does (``roc_auc_score``, ``average_precision_score``).
"""

from __future__ import annotations

import torch


def _check(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scores, labels = scores.detach().double().flatten(), labels.detach().flatten()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.numel()} scores for {labels.numel()} labels")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError("labels must be 0 (inactive) or 1 (active)")
    positives = int(labels.sum())
    if positives == 0 or positives == len(labels):
        raise ValueError("ranking metrics need at least one active and one inactive example")
    return scores, labels.double()


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores [n]`` for ``labels [n]`` (0/1): the probability that a random
    active outranks a random inactive, ties counting one half (Mann-Whitney U with mid-ranks)."""
    scores, labels = _check(scores, labels)
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    ranks[order] = (ends - (counts.double() - 1) / 2)[inverse]     # mid-ranks: ties share their mean rank
    n_pos = labels.sum()
    n_neg = len(labels) - n_pos
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Average precision ``sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds, highest first
    (scikit-learn's ``average_precision_score``: the step-wise area under the precision-recall curve)."""
    scores, labels = _check(scores, labels)
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order], labels[order]
    last_of_tie = torch.ones(len(s), dtype=torch.bool)
    last_of_tie[:-1] = s[1:] != s[:-1]
    tp = torch.cumsum(y, 0)[last_of_tie]
    seen = torch.arange(1, len(s) + 1, dtype=torch.float64)[last_of_tie]
    precision, recall = tp / seen, tp / y.sum()
    steps = torch.diff(recall, prepend=torch.zeros(1, dtype=torch.float64))
    return float((steps * precision).sum())


def delta_auprc(scores: torch.Tensor, query_labels: torch.Tensor) -> float:
    """FS-Mol's ΔAUPRC: the query set's average precision minus its active fraction, the expected
    average precision of a random ranking (``avg_precision - fraction_pos_test`` in FS-Mol's
    ``fs_mol/utils/test_utils.py``; the support set's active fraction, the other reading of the baseline, is
    the same fraction up to rounding under FS-Mol's stratified draws)."""
    return average_precision(scores, query_labels) - float(query_labels.double().mean())


def class1_scores(logits: torch.Tensor) -> torch.Tensor:
    """``[n, 2]`` logits (class 1 = active) -> ``[n]`` log-probabilities of class 1."""
    if logits.dim() != 2 or logits.shape[1] != 2:
        raise ValueError(f"binary tasks need [n, 2] logits, got shape {tuple(logits.shape)}")
    return torch.log_softmax(logits.detach().double(), dim=1)[:, 1]
