"""Matching networks (Vinyals et al. 2016): attention over the support set.

A query ``x`` is classified by an attention-weighted vote of the support labels,
``P(y = c | x, S) = sum_i a(x, x_i) [y_i = c]`` with ``a(x, x_i)`` the softmax over the
support examples of the cosine similarity between the query's and the support
example's embeddings, multiplied by a learned temperature ``s`` (the paper has ``s = 1``:
a softmax over values in ``[-1, 1]`` is nearly uniform, and its gradients are too weak to
train in our 30-minute budget; a learned scale, as in cosine classifiers since, fixes
that and leaves the decision rule the paper's). With full context embeddings (FCE) the support embeddings are
read by a bidirectional LSTM and each query embedding by an attention LSTM over the
support set, so both depend on the whole support set.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fewshot.learners.base import EmbeddedSupport, JointEmbeddingLearner, SupportSet, embedding_width
from fewshot.registry import BuildContext, NoOptions, register_learner


def cosine_similarities(queries: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every query with every support example: ``[Q, D]``, ``[S, D]`` -> ``[Q, S]``."""
    return F.normalize(queries, dim=-1) @ F.normalize(support, dim=-1).T


def cosine_attention(queries: torch.Tensor, support: torch.Tensor, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Softmax over the support set of ``scale`` times the cosine similarities: ``[Q, D]``, ``[S, D]``
    -> ``[Q, S]`` (each row sums to one)."""
    return (scale * cosine_similarities(queries, support)).softmax(dim=-1)


def attention_log_probs(scores: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Log class probabilities of the attention ``softmax(scores)``: ``log sum_{i: y_i = c} a_i``.

    ``scores [Q, S]`` (attention logits), ``labels [S]`` -> ``[Q, ways]``. Computed as a
    masked ``logsumexp`` minus the ``logsumexp`` over the whole support set, so it stays
    finite however peaked the attention is (every class has a support example)."""
    in_class = F.one_hot(labels, ways).T.to(torch.bool)                   # [ways, S]
    masked = scores.unsqueeze(1).masked_fill(~in_class, float("-inf"))      # [Q, ways, S]
    return masked.logsumexp(dim=-1) - scores.logsumexp(dim=-1, keepdim=True)


class FullContextEmbedding(nn.Module):
    """The two FCE readers of Vinyals et al. (2016, appendix A), both of width ``D``.

    * Support, ``g(x_i, S) = g'(x_i) + h_fw_i + h_bw_i``: a bidirectional LSTM runs over
      the support embeddings ``g' [S, D]`` in the order given (the sampler's: class by
      class), its forward and backward outputs ``[S, D]`` are added to ``g'`` (a skip
      connection).
    * Query, ``f(x, S)``: ``K`` steps of an attention LSTM reading the context-embedded
      support set ``g [S, D]``. From ``h_0 = f'(x)``, ``c_0 = 0``::

          r_{k-1} = sum_i softmax_i(h_{k-1} . g_i) g_i             # read-out  [Q, D]
          h^_k, c_k = LSTM(f'(x), [h_{k-1}, r_{k-1}], c_{k-1})
          h_k = h^_k + f'(x)

      and ``f(x, S) = h_K``. The paper's hidden state is the concatenation
      ``[h_{k-1}, r_{k-1}]`` (width 2D); an LSTM uses its previous hidden state only
      through a linear map into the gates, so feeding ``[f'(x), r_{k-1}]`` as the
      input of an ``LSTMCell(2D, D)`` with hidden state ``h_{k-1}`` is the same
      function class, and its output ``h^_k`` has width ``D`` for the skip connection.
    """

    def __init__(self, dim: int, steps: int):
        super().__init__()
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"process_steps must be an integer >= 1, got {steps!r}")
        self.steps = steps
        self.support_lstm = nn.LSTM(dim, dim, bidirectional=True, batch_first=True)
        self.query_cell = nn.LSTMCell(2 * dim, dim)

    def embed_support(self, g: torch.Tensor) -> torch.Tensor:
        """``g' [S, D]`` -> ``g [S, D]``."""
        out, _ = self.support_lstm(g.unsqueeze(0))                    # [1, S, 2D]
        forward, backward = out[0].chunk(2, dim=-1)
        return g + forward + backward

    def embed_query(self, f: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """``f' [Q, D]`` attending over ``support [S, D]`` -> ``f [Q, D]``."""
        h, c = f, torch.zeros_like(f)
        for _ in range(self.steps):
            read = (h @ support.T).softmax(dim=-1) @ support           # [Q, D]
            h_hat, c = self.query_cell(torch.cat([f, read], dim=-1), (h, c))
            h = h_hat + f
        return h


class MatchingNet(JointEmbeddingLearner):
    """Adapt: the (context-)embedded support set. Predict: log class probabilities of the
    cosine attention over it, ``[Q, N]``.

    ``predict`` returns ``log P(y = c | x, S)`` as its logits: a softmax over them gives
    back ``P`` itself, so the common cross-entropy loss is the negative log-likelihood of
    the paper and the argmax is its prediction.

    Support and query are embedded in one forward pass (with the library's BatchNorm, both share one set of
    batch statistics, as in :class:`~fewshot.learners.protonet.ProtoNet`).

    Args:
        encoder: ``[B, ...] -> [B, D]`` (Conv-4 for Omniglot, as in the paper).
        fce: add full context embeddings (:class:`FullContextEmbedding`).
        scale: initial value of the learned temperature ``s`` of the cosine attention.
        process_steps: the attention LSTM's steps ``K`` (FCE only).
        feature_dim: ``D`` when the encoder has no ``embedding_dim`` (FCE only).
    """

    def __init__(self, encoder: nn.Module, fce: bool = False, *, process_steps: int = 5,
                 feature_dim: int | None = None, scale: float = 10.0, batchnorm: str = "batch"):
        super().__init__(batchnorm=batchnorm)
        self.encoder = encoder
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.fce = FullContextEmbedding(embedding_width(encoder, feature_dim), process_steps) if fce else None

    def _context(self, support: torch.Tensor, labels: torch.Tensor) -> EmbeddedSupport:
        return EmbeddedSupport(self.fce.embed_support(support) if self.fce else support, labels)

    def _scores(self, context: EmbeddedSupport, f: torch.Tensor) -> torch.Tensor:
        """Attention logits ``s * cos(f(x), g(x_i))``, ``[Q, S]``, of query embeddings ``f [Q, D]``."""
        if self.fce is not None:
            f = self.fce.embed_query(f, context.embeddings)
        return self.scale * cosine_similarities(f, context.embeddings)

    def attention(self, adapted: SupportSet, query_x: torch.Tensor) -> torch.Tensor:
        """Attention of each query over the support set, ``[Q, S]`` (rows sum to one)."""
        n = adapted.x.shape[0]
        z = self.embed(torch.cat([adapted.x, query_x]))
        return self._scores(self._context(z[:n], adapted.y), z[n:]).softmax(dim=-1)

    def context_embeddings(self, support_x: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
        """The (full-context) support embeddings ``g [S, D]`` (support embedded alone)."""
        return self._context(self.embed(support_x), support_y).embeddings

    def logits(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        context = self._context(support, labels)
        return attention_log_probs(self._scores(context, query), labels, context.ways)


@register_learner("matching")
def _build(options: NoOptions, context: BuildContext) -> MatchingNet:
    return MatchingNet(context.net())


@register_learner("matching-fce")
def _build_fce(options: NoOptions, context: BuildContext) -> MatchingNet:
    return MatchingNet(context.net(), fce=True)
