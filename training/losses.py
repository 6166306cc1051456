"""Dice + cross-entropy for partially labelled cases (marginal loss).

Where an organ was not contoured in a case, its voxels are labelled background
in the label map, which would teach the network that the organ is background.
Instead, for that case the network's probabilities of unknown organs are
merged into background (``log p_bg' = logsumexp(log p_bg, log p_unknown...)``)
before cross-entropy, and the unknown organs are left out of the Dice term
(Shi et al., "Marginal loss and exclusion loss for partially supervised
multi-organ segmentation", MedIA 2021).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def merged_log_probs(logits: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Log-probabilities with unknown classes folded into background.

    Parameters
    ----------
    logits
        ``[B, C, z, y, x]`` class logits.
    known
        ``[B, C]`` bool, True where the class is labelled in that case
        (column 0, background, always True).

    Returns
    -------
    ``[B, C, z, y, x]`` log-probabilities; unknown classes' channels hold
    ``-inf``-like values so they never win and carry no loss.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    out = []
    for b in range(logits.shape[0]):
        unknown = (~known[b]).nonzero().flatten()
        if len(unknown) == 0:
            out.append(logp[b])
            continue
        lb = logp[b].clone()
        bg = torch.logsumexp(torch.cat([logp[b, :1], logp[b, unknown]], dim=0), dim=0)
        lb[0] = bg
        lb[unknown] = -30.0
        out.append(lb)
    return torch.stack(out)


def dice_ce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    known: torch.Tensor,
    smooth: float = 1e-5,
    foreground_ce_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Soft Dice (known foreground classes) plus marginal cross-entropy.

    Parameters
    ----------
    logits
        ``[B, C, z, y, x]``.
    target
        ``[B, z, y, x]`` int64 labels.
    known
        ``[B, C]`` bool.
    foreground_ce_weight
        Cross-entropy weight of every organ class relative to background (1.0:
        unweighted). Organs that fill ~0.1% of a patch otherwise leave the
        network on the all-background plateau for hundreds of steps.

    Returns
    -------
    (loss, {"ce": float, "dice": float}) where dice is the mean soft Dice.
    """
    logp = merged_log_probs(logits, known)
    num_classes = logits.shape[1]
    class_weight = None
    if foreground_ce_weight != 1.0:
        class_weight = torch.full((num_classes,), foreground_ce_weight, device=logits.device)
        class_weight[0] = 1.0
    ce = F.nll_loss(logp, target, weight=class_weight)
    probs = logp.exp()
    onehot = F.one_hot(target, num_classes).permute(0, 4, 1, 2, 3).float()
    dims = (2, 3, 4)
    intersection = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + smooth) / (denom + smooth)  # [B, C]
    weight = known.float().clone()
    weight[:, 0] = 0.0
    mean_dice = (dice * weight).sum() / weight.sum().clamp(min=1)
    loss = ce + (1 - mean_dice)
    return loss, {"ce": float(ce.detach()), "dice": float(mean_dice.detach())}
