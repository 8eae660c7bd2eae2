"""Refusing second derivatives where a hand-written backward is not differentiable: :func:`refuse_double_backward`,
used by the custom ``autograd.Function``s of the norm layers (batch renorm, norm + activation, in-place ABN,
synchronized batch norm). A module of its own so that every layer can import it without importing another layer."""
from __future__ import annotations

import functools

import torch


def refuse_double_backward(what: str):
    """Decorator for the ``backward`` of a custom ``autograd.Function`` whose backward is not differentiable
    (it uses values saved without a graph, or treats some of them as constants): with ``create_graph=True``
    the gradients it returns require grad whenever an input of the forward did, and differentiating them
    raises ``RuntimeError("<what> cannot be differentiated twice: ...")``.

    ``torch.autograd.function.once_differentiable`` decides by whether the *incoming gradients* require grad:
    for ``torch.autograd.grad(layer(x).sum(), x, create_graph=True)`` they do not (the gradient of a sum is a
    constant), so it returns a gradient that silently does not require grad, and a gradient penalty built on
    it contributes nothing. Here the decision is ``ctx.needs_input_grad`` (the true gradient depends on the
    forward's inputs), so such a penalty raises when it is differentiated."""
    msg = (f"{what} cannot be differentiated twice: its backward is not differentiable (as a function marked "
           "@once_differentiable), and a gradient taken with create_graph=True through it was differentiated "
           "again. For second derivatives (gradient penalties) use a layer whose backward is differentiable, "
           "e.g. BatchNorm*d (either impl) followed by the activation.").encode()

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(ctx, *args):
            with torch.no_grad():
                outputs = fn(ctx, *args)
            if not torch.is_grad_enabled():
                return outputs
            if not (any(ctx.needs_input_grad)
                    or any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)):
                return outputs
            outs = outputs if isinstance(outputs, tuple) else (outputs,)

            def fake(v):
                if isinstance(v, torch.Tensor):
                    v = v.detach()
                    v.requires_grad = True
                return v
            err = torch._C._functions.DelayedError(msg, len(outs))
            res = err(*[fake(v) for v in outs])
            if not isinstance(res, tuple):
                res = (res,)
            return res if isinstance(outputs, tuple) else res[0]
        return wrapper
    return decorate
