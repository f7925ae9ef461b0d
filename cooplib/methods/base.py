"""The Learner protocol: every method is named logit heads plus a loss over them.

`train.fit` is the only training loop. It calls `forward` for the heads, `loss` for
the scalar to backpropagate and its named parts, and evaluates every head (top-1 and
top-5) each epoch, so per-branch / per-peer / ensemble accuracy needs no extra code.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class TrainState:
    """Where training is, for losses that ramp a term in over the epochs."""

    epoch: int  # 0-based epoch being trained
    epochs: int  # total epochs of the run
    step: int  # 0-based step within the epoch
    steps_per_epoch: int
    substep: int = 0  # 0-based optimizer step within the batch (see Learner.substeps)
    #: the training-set index of each example of the batch (the loop sets it; None outside
    #: it), for losses with per-example state such as CRD's memory bank
    index: torch.Tensor | None = None

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1)."""
        return (self.epoch + self.step / max(1, self.steps_per_epoch)) / max(1, self.epochs)


class Learner(nn.Module):
    """Base class: subclasses define `forward -> dict[str, Tensor]` and `loss`."""

    #: registry name, e.g. "baseline"; set by subclasses
    method: str = ""
    #: optimizer steps per batch: the loop runs forward, loss, backward and step this many
    #: times on each batch with `state.substep` = 0.. (sequential updates, e.g. DML's).
    substeps: int = 1
    #: augmented views of each training batch: with V > 1 the loop's loader hands `forward`
    #: x of shape (V, B, C, H, W), the same images augmented V times independently (labels
    #: once); evaluation always passes one (B, C, H, W) batch. See `split_views`.
    views: int = 1

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def loss(
        self, heads: dict[str, torch.Tensor], y: torch.Tensor, state: TrainState
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # pragma: no cover
        """Return (total, parts): the scalar to backpropagate and its named terms."""
        raise NotImplementedError

    def after_step(self, state: TrainState) -> None:
        """Called by the loop right after each optimizer step (e.g. to update a temporal-mean
        copy of the weights); must not synchronise with the host. Default: nothing."""

    def bind_data(self, y_train: torch.Tensor) -> None:
        """Called by the loop once before training (and before a checkpoint is loaded) with
        the training labels, indexed as `TrainState.index`; for per-example state sized by
        the training set (CRD's memory bank). Default: nothing."""

    def deployable(self) -> nn.Module:
        """The network used at test time (for TeCost and export); default: self."""
        return self

    def init_from(self, parent: "Learner", optimizer_state: dict | None = None) -> dict | None:
        """Start from a trained learner's weights; return optimizer state to carry over.

        Default: the same architecture, loaded strictly (a missing, unexpected or
        mis-shaped key is an error, never silently dropped), momentum carried as is.
        Methods that change shape on the way (ONE's branch expansion) override this.
        """
        self.load_state_dict(parent.state_dict(), strict=True)
        return optimizer_state

    def diagnostics(self, heads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-batch sums over images of extra evaluation quantities (0-d device tensors,
        named `term/head`); `metrics.evaluate` divides them by the image count and records
        them each epoch as `test/<name>`. Default: none. Called right after `forward` in
        eval mode, without gradients; must not synchronise with the host."""
        return {}

    def gradient_ratio_exclusions(self) -> list[nn.Parameter]:
        """Parameters whose gradient carries no signal (e.g. a bias right before a
        BatchNorm): the gradient-ratio scheduler leaves them at the schedule's lr
        (`cooplib.engine.gradratio`, `exclude="pre_bn"`). Default: none."""
        return []

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """The classifier parameters: the reference of the gradient-ratio scheduler."""
        deployed = self.deployable()
        fc = getattr(deployed, "fc", None)
        if fc is None:
            raise NotImplementedError(f"{type(self).__name__} must define last_layer_parameters()")
        return list(fc.parameters())

    @property
    def primary_head(self) -> str:
        """The head whose test top-1 picks the 'best' epoch."""
        return "net"


def split_views(x: torch.Tensor, k: int) -> list[torch.Tensor]:
    """The input of each of `k` peers: view i of a (V, B, C, H, W) batch of V = k augmented
    views, or the same (B, C, H, W) batch for all (evaluation, or a single-view run)."""
    if x.ndim == 4:
        return [x] * k
    if x.ndim != 5 or x.shape[0] != k:
        raise ValueError(f"expected a (B, C, H, W) batch or {k} views (k, B, C, H, W), got {tuple(x.shape)}")
    return list(x.unbind(0))
