"""FedRCL: relaxed contrastive learning on the penultimate features (Seo et al., CVPR 2024)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fipa.clients.base import CLIENT_METHODS, ClientMethod
from fipa.errors import ConfigError
from fipa.keys import key
from fipa.losses import mean_loss


def relaxed_contrastive_loss(
    z: torch.Tensor, y: torch.Tensor, temperature: float = 0.05, threshold: float = 0.7,
    penalty: float = 1.0, topk_neg: int = 2,
) -> torch.Tensor:
    """FedRCL's relaxed contrastive loss on features z [n, d] with labels y [n] (a scalar).

    With s_ij the cosine similarity and tau the temperature, per anchor i:
      supervised term   -log( e^{s_ip/tau} / (e^{s_ip/tau} + sum_{k in N_i} e^{s_ik/tau}) ),
                        p = its least similar same-class sample (itself if alone),
                        N_i = its ``topk_neg`` most similar other-class samples;
      divergence penalty  log( 1 + sum_{j in P_i, j != i, s_ij >= lambda} e^{(s_ij - 1)/tau} ):
                        the anchor against same-class samples more similar than the threshold
                        lambda, pushing them apart (the "relaxation": no collapse within a class).
    Returns mean_i (supervised_i + penalty * divergence_i).
    """
    n = z.shape[0]
    zn = F.normalize(z, dim=1)
    S = zn @ zn.T  # [n, n] cosine similarities
    same = y[:, None] == y[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    inf = torch.tensor(float("inf"), dtype=S.dtype, device=S.device)
    # hardest positive and hardest negatives; -inf marks "no such sample" (weight e^-inf = 0)
    s_pos = torch.where(same, S, inf).amin(dim=1)  # [n]
    s_neg = torch.where(same, -inf, S).topk(min(topk_neg, n), dim=1).values  # [n, k]
    logits = torch.cat([s_pos[:, None], s_neg], dim=1) / temperature
    supervised = torch.logsumexp(logits, dim=1) - logits[:, 0]
    # same-class pairs above the threshold; the mask is a selection, not differentiated
    close = same & ~eye & (S.detach() >= threshold)
    self_sim = S.diagonal()[:, None]  # 1 up to rounding
    div_logits = torch.cat([self_sim, torch.where(close, S, -inf)], dim=1) / temperature
    divergence = torch.logsumexp(div_logits, dim=1) - div_logits[:, 0]
    return (supervised + penalty * divergence).mean()


@dataclass
class FedRCLParams:
    """FedRCL's options; the defaults are those of FedRCL's released config."""

    weight: float = key(
        1.0, "weight of the relaxed contrastive loss (penultimate features) added to cross-entropy", ge=0)
    penalty: float = key(1.0, "weight of the divergence penalty that pushes apart same-class samples more "
                         "similar than `threshold`", ge=0)
    temperature: float = key(0.05, "softmax temperature of the contrastive logits", gt=0)
    threshold: float = key(0.7, "cosine similarity lambda from which same-class pairs enter the divergence "
                           "penalty", ge=-1, le=1, note="(a cosine similarity)")
    topk_neg: int = key(2, "hardest negatives per anchor: its most similar other-class samples", ge=1)


@CLIENT_METHODS.register("fedrcl")
class FedRCL(ClientMethod):
    """Relaxed contrastive learning (Seo et al., CVPR 2024): CE + weight * RCL(features).

    Simplifications against the released code, stated plainly: the loss is applied to the
    penultimate features only (the paper sums it over the outputs of every ResNet stage),
    features are taken after the last ReLU, anchors are averaged uniformly (the code skips
    anchors whose loss is exactly zero), and no gradient clipping is applied.
    """

    Params = FedRCLParams
    objective_kind = "batch"  # the contrastive term couples a minibatch's samples: no padding

    def check_task(self, task):
        if not task.has_features or task.loss_kind != "ce":
            raise ConfigError(f"client.method: fedrcl needs a classification task with penultimate "
                              f"features (vision); {task.describe()} has none")

    def objective(self, cm, flat, theta0, batch, state, mask=None):
        if mask is not None:
            raise ValueError("fedrcl trains sequentially only (objective_kind 'batch')")
        if self.params.weight == 0:
            return super().objective(cm, flat, theta0, batch, state)
        p, task = self.params, cm.task
        feats, out = task.features(cm.model, cm.layout.unflatten(flat), batch)
        loss = mean_loss(task.loss_kind, out, task.targets(batch))
        obj = loss + p.weight * relaxed_contrastive_loss(feats, task.targets(batch), p.temperature,
                                                         p.threshold, p.penalty, p.topk_neg)
        extra = self.extra_loss(flat, theta0, state)
        return (obj if extra is None else obj + extra), loss
