"""A linear head trained by Adam on minibatches: the model behind every streaming head (:mod:`pipeline.streaming`)."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.head_maths import l2_penalty
from pipeline.streaming import MINIBATCH


class MinibatchLinearHead:
    """A linear head trained by Adam on minibatches, minimising the in-memory head's objective.

    ``loss="multinomial"`` (``logreg``, ``linear``): cross-entropy + ``||W - W0||^2 / (2 C n)``,
    which is ``LogisticRegression(C)``'s objective divided by ``C n`` (``W0 = 0``) and
    :class:`~pipeline.heads.TorchLinearHead`'s. ``loss="squared_hinge"`` (``svm``):
    one-vs-rest squared hinge + ``||W||^2 / (2 C n)``, as ``LinearSVC(C)``. The learning
    rate decays to zero over the passes (cosine), so the last iterate settles.
    """

    def __init__(self, loss: str, C: float, n: int, n_classes: int, dim: int,
                 init: tuple[np.ndarray, np.ndarray] | None, class_weight: np.ndarray | None, seed: int,
                 lr: float = 0.01) -> None:
        torch.manual_seed(seed)
        self.loss = loss
        self.linear = torch.nn.Linear(dim, n_classes)
        W0 = torch.zeros(n_classes, dim) if init is None else torch.as_tensor(init[0], dtype=torch.float32)
        b0 = torch.zeros(n_classes) if init is None else torch.as_tensor(init[1], dtype=torch.float32)
        with torch.no_grad():
            self.linear.weight.copy_(W0)
            self.linear.bias.copy_(b0)
        self.W0, self.C, self.n = W0, C, n
        self.lr = lr
        self.optimiser = torch.optim.Adam(self.linear.parameters(), lr=lr)
        self.weight = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32)

    def _data_loss(self, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.loss == "multinomial":
            return torch.nn.functional.cross_entropy(scores, y, weight=self.weight)
        sign = torch.where(torch.nn.functional.one_hot(y, scores.shape[1]).bool(), 1.0, -1.0)
        per_row = (torch.clamp(1.0 - sign * scores, min=0.0) ** 2).sum(1)
        if self.weight is not None:
            per_row = per_row * self.weight[y]
        return per_row.mean()

    def partial_fit(self, X: np.ndarray, y: np.ndarray, order: np.ndarray) -> None:
        """Adam steps over ``X[order]`` in minibatches (only each minibatch is copied)."""
        Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
        for start in range(0, len(order), MINIBATCH):
            rows = torch.as_tensor(order[start:start + MINIBATCH])
            xb, yb = Xt[rows], yt[rows]
            self.optimiser.zero_grad()
            loss = self._data_loss(self.linear(xb), yb) + l2_penalty(self.linear.weight, self.W0, self.C, self.n)
            loss.backward()
            self.optimiser.step()

    def end_pass(self, fraction_done: float) -> None:
        for group in self.optimiser.param_groups:
            group["lr"] = self.lr * 0.5 * (1 + np.cos(np.pi * fraction_done))

    def coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        return self.linear.weight.detach().double().numpy(), self.linear.bias.detach().double().numpy()
