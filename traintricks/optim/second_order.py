"""Second-order steps for small models, from Hessian-vector products: damped Newton and saddle-free Newton.

Both work in a Krylov subspace built by Lanczos from the gradient ``g`` with Hessian-vector products
``Hv = d(g . v)/d theta`` (Pearlmutter 1994; one double-backward each, the Hessian is never formed):
``V = [v_1 .. v_k]`` orthonormal, ``T = V^T H V`` tridiagonal, ``T = Q diag(lam) Q^T``. With ``k`` equal to
the number of parameters (the default cap ``krylov_dim`` covers small models) the subspace is the whole space.

**Damped Newton**:  ``theta <- theta - lr * V (T + damping I)^{-1} V^T g``. Near a saddle it is
*attracted* to it: along a negative-curvature direction it moves uphill, towards the critical point.

**Saddle-free Newton** (Dauphin et al. 2014, arXiv:1406.2572): replace ``H`` by ``|H|``, the matrix with the
absolute eigenvalues: ``theta <- theta - lr * V Q diag(1 / (|lam| + damping)) Q^T V^T g``. It rescales
by curvature like Newton but always descends, and escapes saddles (tested on ``x^2 - y^2 + y^4 / 4``).

``step(closure)`` needs a closure that returns the loss (it is differentiated twice). Gradient transforms
(clipping, noise) act on the gradient the step solves for: ``grad_transform`` (default ``None``), called as
``grad_transform(params)`` with each parameter's ``.grad`` holding the gradient of ``f``; what it leaves in
``.grad`` is the right-hand side ``g`` of the solve (the Hessian-vector products still come from the loss). The
trainer sets it from its ``grad_transforms``. ``maximize=True``
(keyword-only) steps on ``-f``. Parameters of any strides are updated in place element by element; the
optimizers keep no per-parameter state.
"""
from __future__ import annotations

from typing import Iterable

import torch

from .first_order import Optimizer, _check_range


class _KrylovNewton(Optimizer):
    absolute = False
    needs_closure = True
    #: called as ``grad_transform(params)`` on the gradients (in ``.grad``) before the solve; see the module docstring
    grad_transform = None

    def __init__(self, params: Iterable, lr: float = 1.0, damping: float = 1e-3, krylov_dim: int = 200, *,
                 maximize: bool = False) -> None:
        _check_range("damping", damping, 0.0)
        if krylov_dim < 1:
            raise ValueError(f"krylov_dim must be >= 1, got {krylov_dim}")
        super().__init__(params, dict(lr=lr, damping=damping, krylov_dim=krylov_dim, maximize=maximize))

    def step(self, closure=None):
        if closure is None:
            raise ValueError(f"{type(self).__name__}.step needs a closure that returns the loss")
        with torch.enable_grad():
            loss = closure()
            for group in self.param_groups:
                params = [p for p in group["params"] if p.requires_grad]
                for p in params:
                    if torch.is_complex(p):
                        raise RuntimeError(f"{type(self).__name__} does not support complex parameters")
                objective = -loss if group["maximize"] else loss         # maximize: Newton on -f
                grads = torch.autograd.grad(objective, params, create_graph=True, allow_unused=True)
                pairs = [(p, g) for p, g in zip(params, grads) if g is not None]
                if not pairs:
                    continue
                params, grads = [p for p, _ in pairs], [g for _, g in pairs]
                flat_g = torch.cat([g.reshape(-1) for g in grads])
                rhs = flat_g.detach()
                if self.grad_transform is not None:                     # transforms see the gradient of f
                    with torch.no_grad():
                        for p, g in zip(params, grads):
                            p.grad = -g.detach() if group["maximize"] else g.detach().clone()
                    self.grad_transform(params)
                    rhs = torch.cat([(-p.grad if group["maximize"] else p.grad).reshape(-1) for p in params])

                def hvp(v: torch.Tensor) -> torch.Tensor:
                    hv = torch.autograd.grad(flat_g, params, v, retain_graph=True, allow_unused=True)
                    return torch.cat([(h if h is not None else torch.zeros_like(p)).reshape(-1)
                                      for h, p in zip(hv, params)]).detach()

                d = self._direction(hvp, rhs, group)
                with torch.no_grad():
                    offset = 0
                    for p in params:
                        n = p.numel()
                        p.add_(d[offset:offset + n].view_as(p), alpha=-group["lr"])
                        offset += n
                    if self.grad_transform is None:                    # p.grad: the gradient of f
                        for p, g in zip(params, grads):                # (transformed, when a transform ran)
                            p.grad = -g.detach() if group["maximize"] else g.detach()
        return loss.detach()

    def _direction(self, hvp, g: torch.Tensor, group: dict) -> torch.Tensor:
        k_max = min(group["krylov_dim"], g.numel())
        gnorm = g.norm()
        if gnorm == 0:
            return torch.zeros_like(g)
        vs, alphas, betas = [g / gnorm], [], []
        for j in range(k_max):
            w = hvp(vs[j])
            a = torch.dot(w, vs[j])
            alphas.append(a)
            w = w - a * vs[j] - (betas[-1] * vs[j - 1] if j > 0 else 0)
            for u in vs:                     # full re-orthogonalization: small k, exactness first
                w = w - torch.dot(w, u) * u
            b = w.norm()
            if j == k_max - 1 or b < 1e-10 * gnorm:
                break
            betas.append(b)
            vs.append(w / b)
        k = len(alphas)
        t = torch.diag(torch.stack(alphas))
        if k > 1:
            off = torch.stack(betas[:k - 1])
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        lam, q = torch.linalg.eigh(t)
        if self.absolute:
            lam = lam.abs()
        inv = 1.0 / (lam + group["damping"])
        v = torch.stack(vs[:k], dim=1)                                  # (n, k)
        coeff = q @ (inv * (q.T @ (v.T @ g)))
        return v @ coeff


class Newton(_KrylovNewton):
    """Damped Newton's method on Hessian-vector products (see the module docstring)."""


class SaddleFreeNewton(_KrylovNewton):
    """Saddle-free Newton, |H| in a Krylov subspace (Dauphin et al. 2014, 1406.2572)."""

    absolute = True
