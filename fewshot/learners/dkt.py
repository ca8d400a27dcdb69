"""Deep Kernel Transfer (Patacchiola et al. 2020): a Gaussian process over meta-learned embeddings, with GPyTorch.

An encoder ``g`` maps inputs to embeddings ``z = g(x) [n, D]``; a GP with kernel ``k(z, z')`` (RBF; the linear
kernel ``<z, z'>``, i.e. Bayesian linear regression on the embedding with an isotropic Gaussian prior on the
weights, as ALPaCA (Harrison et al. 2018); or the cosine kernel: a linear kernel of L2-normalised embeddings; each
scaled by a learned output scale) and Gaussian
observation noise ``sigma^2`` is put over them. Meta-training maximises the exact marginal likelihood of each
training task's support and query points together (one set of ``n`` points), in the embedding's weights and the
kernel's and likelihood's hyperparameters alike::

    log p(t | Z) = -1/2 t^T (K + sigma^2 I)^{-1} t - 1/2 log |K + sigma^2 I| - n/2 log 2 pi,   divided by n

(the outputs below share the kernel and the noise, so one Cholesky factor of ``K + sigma^2 I`` serves all of them,
through GPyTorch's linear operators); the loss of a task is minus its sum over outputs. Predictions are the GP
posterior given the support set, in closed form.

``objective="predictive"`` trains instead on what is predicted: the mean over query points of minus the log
density of each query target under its posterior predictive ``N(mu, s^2 + sigma^2)`` given the support set (summed
over outputs), as ALPaCA does; the marginal likelihood also scores predictions from fewer points than the support
set (its chain rule predicts each point from the ones before it), which the test never asks for.

Classification, as in the DKT paper: ``N`` one-vs-rest GP regressions on targets ``+1`` (the class) and ``-1``
(the others), sharing kernel and noise. This is used rather than GPyTorch's Dirichlet classification likelihood
because its per-point noise depends on each episode's labels, while the noise here is one meta-learned number,
and because it is the paper's own recipe. The latents ``f_c`` of a query are independent Gaussians
``N(mu_c, s_c^2)`` (the posterior of class ``c``'s GP, without the noise), and the probability of class ``c`` is
the probability that ``f_c`` is the largest::

    p(c) = E_{f_c ~ N(mu_c, s_c^2)} [ prod_{j != c} Phi((f_c - mu_j) / s_j) ],

estimated with ``samples`` draws of each ``f_c`` (default 256; Rao-Blackwellised: the other classes are
integrated exactly, so every probability is positive and the estimate smooth), then normalised to sum to 1.
:meth:`DKT.predict` returns their logs ``[Q, N]`` (the evaluator's softmax gives them back).

Regression: one GP on the targets; :meth:`DKT.predict` gives the posterior mean ``[Q, 1]`` and
:meth:`DKT.predict_interval` the central 95 % interval of the predictive ``N(mu, s^2 + sigma^2)`` of each target.

``task_scale=True`` (regression) gives each task its own scale of the GP: the covariance of the targets is
``tau^2 (K + sigma^2 I)`` with ``tau^2 ~ InverseGamma(alpha, beta)`` (``alpha``, ``beta`` meta-learned), integrated
out in closed form (the normal-inverse-gamma conjugacy). Given ``n`` support targets ``t`` with
``q = t^T (K + sigma^2 I)^{-1} t``, the posterior of ``tau^2`` is ``InverseGamma(alpha + n/2, beta + q/2)``, the
posterior mean ``mu`` is unchanged, and each query target's predictive is a Student-t with ``2 alpha + n`` degrees
of freedom, location ``mu`` and scale ``sqrt((beta + q/2) / (alpha + n/2) (s^2 + sigma^2))``: its width follows the
size of the support targets (a sinusoid of amplitude 0.1 gets a narrower interval than one of amplitude 5), where
the Gaussian predictive's depends only on where the points are. The marginal likelihood is the multivariate t::

    log p(t | Z) = log G(alpha + n/2) - log G(alpha) + alpha log beta - (alpha + n/2) log(beta + q/2)
                   - 1/2 log |K + sigma^2 I| - n/2 log 2 pi                          (G: the gamma function)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from fewshot.learners.base import JointEmbeddingLearner, SupportSet, Task, metric_name, task_metric
from fewshot.registry import BuildContext, register_learner
from fewshot.tasks.episode import Episode, RaggedTaskBatch, TaskBatch
from fewshot.uncertainty import PredictiveInterval, gaussian_interval, student_t_interval

KERNELS = ("rbf", "linear", "cosine")
OBJECTIVES = ("marginal", "predictive")
DEFAULT_SAMPLES = 256


def _gpytorch():
    try:
        import gpytorch
    except ImportError:
        raise ValueError("the dkt learner needs GPyTorch: pip install 'fewshot[bayes]' (or pip install "
                         "gpytorch)") from None
    return gpytorch


class DKT(JointEmbeddingLearner):
    """Deep Kernel Transfer (module docstring).

    Args:
        encoder: ``[B, ...] -> [B, D]``, any ``nn.Module``.
        kernel: ``"rbf"``, ``"linear"`` or ``"cosine"``.
        task: ``"classification"`` (one-vs-rest GPs on ±1) or ``"regression"`` (one GP, targets ``[n, 1]``).
        samples: draws of each class's latent per query for the class probabilities.
        objective: ``"marginal"`` (the marginal likelihood of support and query together) or ``"predictive"``
            (the query's posterior predictive given the support; module docstring).
        seed: seeds those draws (a generator seeded with it for each prediction, so a prediction is the same
            every time it is made).
        task_scale: regression: a per-task scale of the GP with an inverse-gamma prior, integrated out (a
            Student-t predictive; module docstring).
        batchnorm: ``"batch"`` or ``"running"`` (:mod:`fewshot.learners.base`).
    """

    def __init__(self, encoder: nn.Module, kernel: str = "rbf", task: Task = "classification",
                 samples: int = DEFAULT_SAMPLES, *, objective: str = "marginal", seed: int = 0,
                 task_scale: bool = False, batchnorm: str = "batch"):
        super().__init__(batchnorm=batchnorm)
        check_options(kernel, samples, objective)
        if task_scale and task != "regression":
            raise ValueError("task_scale (a per-task scale of the GP) is for regression; classification's targets "
                             "are ±1 in every task: drop task_scale")
        gpytorch = _gpytorch()
        self.encoder, self.kernel_name, self.task, self.samples, self.seed = encoder, kernel, task, samples, seed
        self.objective = objective
        covar = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel() if kernel == "rbf"
                                             else gpytorch.kernels.LinearKernel())
        self.kernel, self.likelihood = covar, gpytorch.likelihoods.GaussianLikelihood()
        self.task_scale = task_scale
        if task_scale:      # alpha = softplus(raw), beta likewise: initially 2 and 1, a prior mean of tau^2 of 1
            self.raw_scale_prior = nn.Parameter(torch.tensor([2.0, 1.0]).expm1().log())

    # -- the GP ------------------------------------------------------------------------------------
    def features(self, z: torch.Tensor) -> torch.Tensor:
        """What the kernel sees: the embeddings ``[n, D]`` (L2-normalised for the cosine kernel)."""
        return F.normalize(z, dim=-1) if self.kernel_name == "cosine" else z

    def targets(self, labels: torch.Tensor, ways: int | None = None) -> torch.Tensor:
        """GP targets ``[outputs, n]``: ±1 one-vs-rest rows for labels ``[n]``, or regression targets ``[n, 1]``
        transposed."""
        if self.task == "regression":
            return labels.reshape(labels.shape[0], -1).T.to(torch.get_default_dtype())
        ways = ways or int(labels.max()) + 1
        return 2.0 * F.one_hot(labels.long(), ways).T.to(torch.get_default_dtype()) - 1.0

    def _noisy_gram(self, f: torch.Tensor):
        """``K + sigma^2 I`` of kernel inputs ``f [..., n, D]``, a GPyTorch linear operator ``[..., n, n]`` (the
        covariance of the GP prior's marginal under the Gaussian likelihood)."""
        gpytorch = _gpytorch()
        prior = gpytorch.distributions.MultivariateNormal(f.new_zeros(f.shape[:-1]), self.kernel(f))
        return self.likelihood(prior).lazy_covariance_matrix

    def marginal_log_likelihood(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``[..., outputs]``: the exact log marginal likelihood of targets ``t [..., outputs, n]`` at embeddings
        ``z [..., n, D]`` (leading axes: tasks), divided by ``n``. The outputs share kernel and noise, so one
        Cholesky factor of ``K + sigma^2 I`` serves all of them (through GPyTorch's ``inv_quad_logdet``)."""
        n = z.shape[-2]
        inv_quad, logdet = self._noisy_gram(self.features(z)).inv_quad_logdet(
            inv_quad_rhs=t.transpose(-1, -2), logdet=True, reduce_inv_quad=False)
        if self.task_scale:     # the multivariate t of the module docstring
            alpha, beta = self.scale_prior
            fit = (torch.lgamma(alpha + n / 2) - torch.lgamma(alpha) + alpha * beta.log()
                   - (alpha + n / 2) * (beta + inv_quad / 2).log())
        else:
            fit = -0.5 * inv_quad
        return (fit - 0.5 * logdet.unsqueeze(-1) - 0.5 * n * math.log(2 * math.pi)) / n

    def predictive_log_likelihood(self, support_z: torch.Tensor, t: torch.Tensor, query_z: torch.Tensor,
                                  query_t: torch.Tensor) -> torch.Tensor:
        """``[..., outputs]``: the mean over query points of the log density of each query target
        ``query_t [..., outputs, Q]`` under its :meth:`predictive` given the support (``support_z [..., S, D]``,
        ``t [..., outputs, S]``, ``query_z [..., Q, D]``)."""
        return self.predictive(support_z, t, query_z).log_prob(query_t).mean(-1)

    def predictive(self, support_z: torch.Tensor, t: torch.Tensor, query_z: torch.Tensor
                   ) -> torch.distributions.Distribution:
        """The predictive distribution of each query target given the support (arguments as
        :meth:`posterior`), batch shape ``[..., outputs, Q]``: ``N(mu, s^2 + sigma^2)``, or with ``task_scale``
        the Student-t of the module docstring."""
        mean, var, inv_quad = self._posterior(support_z, t, query_z)
        if not self.task_scale:
            return torch.distributions.Normal(mean, (var + self.noise).sqrt())
        shape, rate = self.scale_posterior(support_z.shape[-2], inv_quad)
        scale = ((rate / shape).unsqueeze(-1) * (var + self.noise)).sqrt()
        return torch.distributions.StudentT((2 * shape).unsqueeze(-1).expand_as(mean), mean, scale)

    def posterior(self, support_z: torch.Tensor, t: torch.Tensor, query_z: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and variance of the latent ``f`` at ``query_z [..., Q, D]`` given the support
        ``support_z [..., S, D]`` with targets ``t [..., outputs, S]``: each ``[..., outputs, Q]`` (no
        observation noise), in closed form: ``mu = K_*^T A^-1 t``, ``s^2 = k_** - K_*^T A^-1 K_*`` with
        ``A = K + sigma^2 I`` (with ``task_scale``, ``s^2`` is to be multiplied by the task's ``tau^2``)."""
        mean, var, _ = self._posterior(support_z, t, query_z)
        return mean, var

    def _posterior(self, support_z: torch.Tensor, t: torch.Tensor, query_z: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`posterior`'s mean and variance and ``q = t^T A^-1 t`` of each output, ``[..., outputs]``."""
        fs, fq = self.features(support_z), self.features(query_z)
        cross = self.kernel(fs, fq).to_dense()                                         # [..., S, Q]
        outputs = t.shape[-2]
        solved = self._noisy_gram(fs).solve(torch.cat([t.transpose(-1, -2), cross], dim=-1))
        mean = (cross.transpose(-1, -2) @ solved[..., :outputs]).transpose(-1, -2)     # [..., outputs, Q]
        var = self.kernel(fq, diag=True) - (cross * solved[..., outputs:]).sum(-2)    # [..., Q]
        inv_quad = (t.transpose(-1, -2) * solved[..., :outputs]).sum(-2)              # [..., outputs]
        return mean, var.clamp(min=1e-12).unsqueeze(-2).expand_as(mean), inv_quad

    @property
    def scale_prior(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``task_scale``: the inverse-gamma prior's shape ``alpha`` and scale ``beta`` of ``tau^2`` (scalars)."""
        alpha, beta = F.softplus(self.raw_scale_prior)
        return alpha, beta

    def scale_posterior(self, n: int, inv_quad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``task_scale``: the posterior ``InverseGamma(alpha + n/2, beta + q/2)`` of ``tau^2`` given ``n`` support
        targets with ``q = inv_quad [..., outputs]``: its shape and scale, each ``[..., outputs]``."""
        alpha, beta = self.scale_prior
        return (alpha + n / 2).expand_as(inv_quad), beta + inv_quad / 2

    @property
    def noise(self) -> torch.Tensor:
        """The observation noise variance ``sigma^2`` (a scalar tensor)."""
        return self.likelihood.noise.reshape(())

    # -- the protocol --------------------------------------------------------------------------------
    def logits(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Classification: log class probabilities ``[Q, N]``; regression: the posterior mean ``[Q, 1]``."""
        mean, var = self.posterior(support, self.targets(labels), query)
        if self.task == "regression":
            return mean.T
        return class_log_probs(mean.T, var.sqrt().T, self.samples, self.seed)

    def predict_interval(self, adapted: SupportSet, query_x: torch.Tensor, level: float = 0.95
                         ) -> PredictiveInterval:
        """Regression: the predictive mean and central ``level`` interval of :meth:`predictive`
        (``N(mu, s^2 + sigma^2)``, or the Student-t of ``task_scale``), each ``[Q, 1]``."""
        if self.task != "regression":
            raise ValueError("predictive intervals are for regression; this DKT learner classifies")
        n = adapted.x.shape[0]
        z = self.embed(torch.cat([adapted.x, query_x]))
        dist = self.predictive(z[:n], self.targets(adapted.y), z[n:])
        if self.task_scale:
            return student_t_interval(dist.loc.T, dist.scale.T, dist.df.T, level)
        return gaussian_interval(dist.loc.T, dist.scale.T, level)

    def latent(self, adapted: SupportSet, query_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and standard deviation of each output's latent at ``query_x``: ``[Q, outputs]`` each
        (classification: one column per class)."""
        n = adapted.x.shape[0]
        z = self.embed(torch.cat([adapted.x, query_x]))
        mean, var = self.posterior(z[:n], self.targets(adapted.y), z[n:])
        return mean.T, var.sqrt().T

    def function_samples(self, adapted: SupportSet, query_x: torch.Tensor, samples: int, seed: int = 0
                         ) -> torch.Tensor:
        """Regression: ``samples`` joint draws of the latent function at ``query_x [Q, ...]`` from the posterior
        given the support set, ``[samples, Q, 1]`` (seeded with ``seed``; with ``task_scale`` each draw's covariance
        is scaled by its own draw of ``tau^2`` from the task's posterior, a multivariate t)."""
        n = adapted.x.shape[0]
        z = self.features(self.embed(torch.cat([adapted.x, query_x])))
        fs, fq = z[:n], z[n:]
        cross = self.kernel(fs, fq).to_dense()                                          # [S, Q]
        t = self.targets(adapted.y)
        solved = self._noisy_gram(fs).solve(torch.cat([t.T, cross], dim=-1))
        mean = cross.T @ solved[:, :1]                                                   # [Q, 1]
        cov = (self.kernel(fq).to_dense() - cross.T @ solved[:, 1:]).double()
        # a square root of the (near-singular) posterior covariance from its eigenpairs, negative ones clipped
        values, vectors = torch.linalg.eigh((cov + cov.T) / 2)
        root = (vectors * values.clamp(min=0).sqrt()).to(mean.dtype)
        g = torch.Generator(device=cov.device).manual_seed(seed)
        eps = torch.randn(samples, cov.shape[0], 1, generator=g, dtype=mean.dtype, device=cov.device)
        if self.task_scale:      # tau^2 = rate / Gamma(shape, 1); torch's gamma sampler takes no generator
            shape, rate = self.scale_posterior(n, (t.T * solved[:, :1]).sum(0))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                tau2 = rate / torch.distributions.Gamma(shape, torch.ones_like(shape)).sample((samples,))
            eps = eps * tau2.sqrt().reshape(samples, 1, 1)
        return mean + root @ eps

    def episode_loss(self, episode: Episode) -> tuple[torch.Tensor, dict[str, float]]:
        """Minus the marginal log likelihood (per point, summed over outputs) of support and query together, or
        minus the query's mean predictive log density (``objective="predictive"``); the metric is that of the query
        predicted from the support by the posterior mean (not differentiated: accuracy of its arg-max, or MSE)."""
        return self.meta_loss(TaskBatch(*(t.unsqueeze(0) for t in (episode.support_x, episode.support_y,
                                                                   episode.query_x, episode.query_y))))

    def meta_loss(self, batch: TaskBatch | RaggedTaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The mean over tasks of :meth:`episode_loss`; the GPs of a stacked batch's tasks are one batched GP
        (each task's examples embedded on their own, so per-batch BatchNorm sees one task at a time)."""
        if not isinstance(batch, TaskBatch):
            return super().meta_loss(batch)
        n = batch.support_x.shape[1]
        z = torch.stack([self.embed(torch.cat([e.support_x, e.query_x])) for e in batch])       # [T, n + q, D]
        labels = torch.cat([batch.support_y, batch.query_y], dim=1)
        ways = None if self.task == "regression" else int(labels.max()) + 1
        t = torch.stack([self.targets(y, ways) for y in labels])                                # [T, outputs, n + q]
        if self.objective == "predictive":
            loss = -self.predictive_log_likelihood(z[:, :n], t[..., :n], z[:, n:], t[..., n:]).sum(-1).mean()
        else:
            loss = -self.marginal_log_likelihood(z, t).sum(-1).mean()
        with torch.no_grad():      # the training metric: the arg-max of the posterior mean (the DKT paper's rule)
            mean, _ = self.posterior(z[:, :n].detach(), t[..., :n], z[:, n:].detach())           # [T, outputs, q]
            outputs = mean.transpose(1, 2).flatten(0, 1)                                         # [T q, outputs]
        targets = batch.query_y.flatten(0, 1)
        return loss, {"loss": float(loss.detach()), metric_name(self.task): task_metric(outputs, targets, self.task)}

    def meta_backward(self, batch: TaskBatch | RaggedTaskBatch, total_tasks: int | None = None) -> dict[str, float]:
        """The gradient of :meth:`meta_loss` (a stacked batch in one backward), scaled to ``total_tasks``."""
        if not isinstance(batch, TaskBatch):
            return super().meta_backward(batch, total_tasks)
        loss, metrics = self.meta_loss(batch)
        (loss * batch.num_tasks / (total_tasks or batch.num_tasks)).backward()
        return metrics


def class_log_probs(mean: torch.Tensor, std: torch.Tensor, samples: int, seed: int = 0) -> torch.Tensor:
    """Log of ``p(c) = P(f_c = max_j f_j)`` for independent latents ``f_j ~ N(mean_j, std_j^2)``: ``mean``,
    ``std`` ``[Q, N]`` -> ``[Q, N]`` (module docstring: ``samples`` draws of each ``f_c``, the other classes
    integrated exactly, the estimates normalised over classes)."""
    g = torch.Generator(device=mean.device).manual_seed(seed)
    eps = torch.randn(samples, *mean.shape, generator=g, device=mean.device, dtype=mean.dtype)
    f = mean + std * eps                                                          # [S, Q, N] draws of each f_c
    # log Phi((f_c - mu_j) / s_j) for every pair (c, j): [S, Q, N(c), N(j)]
    log_cdf = torch.special.log_ndtr((f.unsqueeze(-1) - mean.unsqueeze(-2)) / std.unsqueeze(-2))
    log_cdf = log_cdf - torch.diag_embed(torch.diagonal(log_cdf, dim1=-2, dim2=-1))   # drop j = c
    log_p = torch.logsumexp(log_cdf.sum(-1), dim=0) - math.log(samples)           # [Q, N]
    return torch.log_softmax(log_p, dim=-1)


def check_options(kernel: str, samples: int, objective: str = "marginal") -> None:
    if kernel not in KERNELS:
        raise ValueError(f"unknown dkt kernel {kernel!r}; use one of {', '.join(KERNELS)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown dkt objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples (draws of each class's latent per query) must be an integer >= 1, got "
                         f"{samples!r}")


@dataclass
class DKTOptions:
    """The ``learner`` section of DKT runs.

    Attributes:
        kernel: ``rbf``, ``linear`` (Bayesian linear regression on the embedding) or ``cosine`` (a linear kernel
            of L2-normalised embeddings).
        samples: draws of each class's latent per query for the class probabilities.
        feature_dim: regression: the width of the net's last layer, the embedding (default 40).
        objective: ``marginal`` (the marginal likelihood of support and query together) or ``predictive`` (the
            query's posterior predictive given the support).
        task_scale: regression: a per-task scale of the GP, integrated out under an inverse-gamma prior (a
            Student-t predictive whose width follows the size of the support targets).
    """

    kernel: str = "rbf"
    samples: int = DEFAULT_SAMPLES
    feature_dim: int = 40
    objective: str = "marginal"
    task_scale: bool = field(default=False, metadata={"tasks": ("regression",)})

    def validate(self) -> None:
        check_options(self.kernel, self.samples, self.objective)
        if self.feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {self.feature_dim}")


@register_learner("dkt", options=DKTOptions, tasks=("classification", "regression"))
def _build(options: DKTOptions, context: BuildContext) -> DKT:
    encoder = context.net(out_features=options.feature_dim) if context.task == "regression" else context.net()
    return DKT(encoder, options.kernel, context.task, options.samples, objective=options.objective,
               seed=context.seed, task_scale=options.task_scale)
