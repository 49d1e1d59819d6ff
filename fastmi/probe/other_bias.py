"""The "other" symbol of the ``"observed"`` alphabet, calibrated on the validation sentences.

The observed alphabet is the ids of the training bags plus "other" for every other id
(:class:`fastmi.data.alphabet.Alphabet`).  No training token is "other", so the trained probe gives
it almost no mass; yet about as many held-out tokens fall outside the training ids as validation
tokens do (12% on the demo), and each would cost -log q(other | z), a large number.  After training
(best epoch restored), per layer, the bias b of the other row is set to the value that minimises the
validation cross-entropy, the mean over validation sentences of

    CE_s(b) = logaddexp(r_s, a_s + b) - (c_s / n_s) (a_s + b) - (1 / n_s) sum of the other tokens' logits,

with a_s = w_other . z_s, r_s the log-sum-exp of the other rows' logits, c_s the sentence's "other"
count and n_s its length.  It is convex in b, with derivative sum_s [sigmoid(a_s + b - r_s) - c_s / n_s],
increasing in b: bisection finds its root.  The validation sentences are not held out, so the decoder
is still fixed before any held-out sentence is read and the bound stays valid (docs/theory.md §7).

When no validation token is "other", the minimum is at b = -inf; the trained bias is then kept.
"""

from __future__ import annotations

import torch

from fastmi import kernels
from fastmi.data.bags import BagTargets

__all__ = ["calibrate_other_bias", "with_calibrated_other"]


@torch.no_grad()
def calibrate_other_bias(
    z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, bags: BagTargets, chunk: int = 1024, steps: int = 100
) -> tuple[torch.Tensor, list[dict]]:
    """The bias [L, M] with its last column ("other") set to minimise the validation cross-entropy of
    the probes ``weight`` [L, M, d], ``bias`` [L, M] on features ``z`` [L, N, d] of the validation rows
    ``bags`` (compact ids, "other" = M - 1).  Also, per layer, what was done (for the training log)."""
    num_layers, num_rows, _ = z.shape
    other = weight.shape[1] - 1
    lengths = bags.lengths.double()
    keep = lengths > 0
    on_other = torch.zeros(num_rows, dtype=torch.float64, device=z.device)
    is_other = bags.ids == other
    on_other.index_add_(0, bags.row_index[is_other], bags.counts[is_other].double())
    share = torch.where(keep, on_other / lengths.clamp(min=1), torch.zeros_like(on_other))  # c_s / n_s
    rest_weight, rest_bias = weight[:, :other].contiguous(), bias[:, :other].contiguous()
    gaps = []  # a_s - r_s per layer and row
    for start in range(0, num_rows, chunk):
        rows = slice(start, min(start + chunk, num_rows))
        _, rest = kernels.bag_topk(z[:, rows].contiguous(), rest_weight, rest_bias, 1)
        a = torch.einsum("lbd,ld->lb", z[:, rows].float(), weight[:, other].float())
        gaps.append(a.double() - rest.double())
    gap = torch.cat(gaps, dim=1)[:, keep]  # [L, S]
    share = share[keep]
    target = share.sum()
    new_bias = bias.clone()
    log = []
    if gap.shape[1] == 0 or float(target) == 0.0:
        for layer in range(num_layers):
            log.append({"trained": float(bias[layer, other]), "calibrated": None, "validation_share": 0.0})
        return new_bias, log
    # Bracket: far enough that every sigmoid is ~0 (lo) or ~1 (hi); the root lies between unless every
    # validation token is "other" (then b -> +inf and hi, a huge logit, is the answer).
    lo = (-gap).amin(dim=1) - 60.0
    hi = (-gap).amax(dim=1) + 60.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        slope = torch.sigmoid(gap + mid.unsqueeze(1)).sum(dim=1) - target
        lo = torch.where(slope < 0, mid, lo)
        hi = torch.where(slope < 0, hi, mid)
    calibrated = (lo + hi) / 2
    new_bias[:, other] = calibrated.to(bias.dtype)
    mean_share = float(target) / gap.shape[1]
    for layer in range(num_layers):
        trained, value = float(bias[layer, other]), float(calibrated[layer])
        log.append({"trained": trained, "calibrated": value, "validation_share": mean_share})
    return new_bias, log


def with_calibrated_other(fit):
    """``fit`` (:func:`fastmi.probe.heads.fit_heads` with its settings bound) followed by
    :func:`calibrate_other_bias` on its validation rows; the log goes to ``fitted.other_bias``."""

    def fit_and_calibrate(z_train, targets_train, z_val, targets_val, alphabet_size, config, **kwargs):
        fitted = fit(z_train, targets_train, z_val, targets_val, alphabet_size, config, **kwargs)
        chunk = max(config.batch_size, 1)
        fitted.bias, fitted.other_bias = calibrate_other_bias(
            fitted.features(z_val), fitted.weight, fitted.bias, targets_val, chunk=chunk
        )
        return fitted

    return fit_and_calibrate
