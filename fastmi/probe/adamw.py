"""AdamW for the probes: the one optimiser every probe form and softmax trains with.

Written out rather than ``torch.optim.AdamW`` for two reasons: ``torch.optim`` imports torch._dynamo
on first use, which costs seconds of a cold start on a small CPU (more than the whole probe of a
small model), and under sampled softmax a step's gradient covers only some rows of W and b
(:mod:`fastmi.probe.sampled_softmax`), which torch's optimisers cannot take without an [L, M, d]
gradient.  With every row covered it is exactly AdamW (Loshchilov & Hutter), op for op as torch's
single-tensor path computes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["AdamW"]


class AdamW:
    """AdamW (Loshchilov & Hutter) whose gradient may cover only some rows of a parameter.

    Parameters are tensors; :meth:`step` takes, per parameter, its gradient and either None (the
    gradient covers every row) or the indices along dim 1 ([L, R, ...] parameters) that it covers,
    optionally with a third item: a copy of the parameter's values at those rows, which the step
    then updates in place instead of gathering them again (the sampled loss has gathered them
    already).  ``step()`` with no argument takes each parameter's ``.grad`` over every row.

    Rows not covered keep their value and their moments, as in TensorFlow's LazyAdam, so a sampled
    step costs O(|S|) rows, not O(M) (``lazy=True``).  With ``lazy=False`` ("dense moments") the step
    is plain AdamW with a zero gradient on the rows not covered: every row's moments decay and every
    row moves by its momentum, as every row does under the full softmax, where each step pushes down
    all the ids a batch lacks; it costs a few elementwise passes over all M rows (what a full-softmax
    step's optimiser costs too), but no [L, M, d] gradient.  The bias corrections use the global
    step count.  ``weight_decay`` and ``lr_scale``: one per parameter.  ``anchors``: per parameter,
    None (decay toward 0) or the tensor its weight decay pulls it toward (a Gaussian prior centred
    there, as the embedding probe's W is pulled toward its start; full-gradient steps only); an
    anchored parameter's decay may be a tensor that broadcasts against it (one strength per layer).
    ``layer_lr`` (an attribute, None at first): a float tensor [L] multiplying each layer's step size
    and decay (every parameter's dim 0 is the layer), which the epoch loop lowers on a layer's plateau.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        lr: float,
        weight_decay: Sequence[float],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        lr_scale: Sequence[float] | None = None,
        lazy: bool = True,
        anchors: Sequence[torch.Tensor | None] | None = None,
        fused: bool | None = None,
    ) -> None:
        self.params, self.lr, self.weight_decay, self.lazy = list(params), lr, list(weight_decay), lazy
        # torch's fused AdamW kernel for full-gradient steps: one pass over W instead of about six, what
        # bounds a probe step on a GPU at large shapes (docs/performance.md); default: on CUDA only.
        self.fused = (self.params[0].is_cuda if self.params else False) if fused is None else fused
        self.anchors = list(anchors) if anchors is not None else [None] * len(self.params)
        self.lr_scale = list(lr_scale) if lr_scale is not None else [1.0] * len(self.params)
        self.betas, self.eps, self.steps = betas, eps, 0
        self.layer_lr: torch.Tensor | None = None
        self.moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.params]

    @torch.no_grad()
    def step(self, grads: Sequence[tuple] | None = None) -> None:
        if grads is None:
            grads = [(p.grad, None) for p in self.params]
        self.steps += 1
        beta1, beta2 = self.betas
        step_size = self.lr / (1 - beta1**self.steps)
        correction2 = math.sqrt(1 - beta2**self.steps)
        for p, (m, v), decay, scale, anchor, (grad, rows, *gathered) in zip(
            self.params, self.moments, self.weight_decay, self.lr_scale, self.anchors, grads
        ):
            if grad is None:
                continue
            layer = self._layer_factor(p)
            lr = self.lr if layer is None else self.lr * layer  # float, or per layer [L, 1, ...]
            if anchor is not None:
                if rows is not None:
                    raise ValueError("a parameter with an anchor takes full-gradient steps only")
                # p - lr * decay * (p - anchor): decay toward the anchor, then Adam's step
                weight = lr * decay
                p.lerp_(anchor, weight if isinstance(weight, torch.Tensor) else float(weight))
                decay = 0.0
            if rows is not None and not self.lazy:
                if decay:
                    p.mul_(1 - lr * decay)
                m.mul_(beta1).index_add_(1, rows, grad, alpha=1 - beta1)
                v.mul_(beta2).index_add_(1, rows, grad * grad, alpha=1 - beta2)
                p.addcdiv_(_scaled(m, layer), v.sqrt().div_(correction2).add_(self.eps), value=-step_size * scale)
                continue
            if rows is None and self.fused and not isinstance(decay, torch.Tensor):
                self._fused_steps(p, grad, m, v, decay, scale)
                continue
            if rows is None:
                p_rows, m_rows, v_rows = p, m, v
            else:
                p_rows = gathered[0] if gathered else p.index_select(1, rows)
                m_rows, v_rows = m.index_select(1, rows), v.index_select(1, rows)
            if decay:
                p_rows.mul_(1 - lr * decay)
            m_rows.lerp_(grad, 1 - beta1)
            v_rows.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denominator = v_rows.sqrt().div_(correction2).add_(self.eps)
            p_rows.addcdiv_(_scaled(m_rows, layer), denominator, value=-step_size * scale)
            if rows is not None:
                p.index_copy_(1, rows, p_rows)
                m.index_copy_(1, rows, m_rows)
                v.index_copy_(1, rows, v_rows)

    def _layer_factor(self, p: torch.Tensor) -> torch.Tensor | None:
        """``layer_lr`` shaped to broadcast against ``p`` (its dim 0 is the layer), or None."""
        if self.layer_lr is None:
            return None
        return self.layer_lr.to(p.device, p.dtype).view(-1, *([1] * (p.dim() - 1)))

    def _fused_steps(self, p, grad, m, v, decay: float, scale: float) -> None:
        """Plain AdamW on every row of ``p`` through torch's fused kernel: one call, or under
        ``layer_lr`` one call per distinct step size over the views of the layers that share it."""
        if self.layer_lr is None:
            self._fused_step([p], [grad], [m], [v], decay, self.lr * scale)
            return
        factors = self.layer_lr.tolist()
        for factor in sorted(set(factors)):
            layers = [i for i, f in enumerate(factors) if f == factor]
            views = [[t[i] for i in layers] for t in (p, grad, m, v)]
            self._fused_step(*views, decay, self.lr * scale * factor)

    def _fused_step(self, ps, grads, ms, vs, decay: float, lr: float) -> None:
        """torch's fused AdamW kernel on lists of tensors (given the global step count, already counting
        this step, as torch.optim.AdamW gives it)."""
        steps = [torch.tensor(float(self.steps), device=p.device) for p in ps]
        torch._fused_adamw_(
            ps,
            grads,
            ms,
            vs,
            [],
            steps,
            lr=lr,
            beta1=self.betas[0],
            beta2=self.betas[1],
            weight_decay=float(decay),
            eps=self.eps,
            amsgrad=False,
            maximize=False,
        )


def _scaled(moment: torch.Tensor, layer: torch.Tensor | None) -> torch.Tensor:
    """Adam's first moment times each layer's step factor (a new tensor; the moment is kept)."""
    return moment if layer is None else moment * layer
