"""Folding batch normalization into the preceding convolution or linear layer for inference.

At inference batch norm is a fixed per-channel affine map of the layer output ``z = W x + b``
(Ioffe & Szegedy 2015, arXiv:1502.03167; the notes' "absorb the numbers into convolution parameters"):

    y = gamma * (z - mu) / sqrt(var + eps) + beta = s * z + (beta - s * mu),   s = gamma / sqrt(var + eps)

so the pair equals one layer with weights ``W' = s * W`` (scaled per output channel) and bias
``b' = s * (b - mu) + beta``, where ``mu``/``var`` are the running estimates. A norm module that also applies
an activation (:class:`~traintricks.nn.BatchNormAct2d`, :class:`~traintricks.memory.InPlaceABN`) leaves
that activation behind. The fold is exact up to rounding, saves the normalization's time and memory at
inference, and changes nothing in training code: :func:`fold_batchnorm` works on a copy.

Where the pairs are found: neighbours in a ``nn.Sequential`` (nested ones too) are folded in place, keeping
the model's classes; pairs anywhere else (a residual block's ``self.bn1(self.conv1(x))``, a downsample
branch) are found in a ``torch.fx`` graph of the module that calls them, which is then returned as a
``torch.fx.GraphModule``. A pair is folded only where that is exactly equivalent; everything else is listed
with its reason in a :class:`FoldReport`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from ..errors import warn
from . import batchnorm as _bn_module
from . import batchrenorm as _brn_module
from .fused import _BatchNormAct

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_PLAIN_LAYER_FORWARDS = {nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward, nn.Linear.forward}


def _plain_norm_forwards() -> set:
    """``forward`` functions of the batch norms that compute exactly ``BN(x)`` in eval (no activation): torch's
    and ours (batch norm, batch renorm), found by module so that either class layout is recognized."""
    forwards = {nn.modules.batchnorm._BatchNorm.forward, nn.SyncBatchNorm.forward}
    for mod in (_bn_module, _brn_module):
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == mod.__name__:
                forwards.add(obj.forward)
    return forwards


def _layer_forward_ok(layer: nn.Module) -> bool:
    if type(layer).forward in _PLAIN_LAYER_FORWARDS:
        return True
    from .dropconnect import DropConnectConv2d, DropConnectLinear     # plain conv / linear in eval
    return isinstance(layer, (DropConnectConv2d, DropConnectLinear)) and not layer.training


def _is_norm(m: nn.Module) -> bool:
    """A batch-norm-like module: torch's or ours (recognized by its running-statistics attributes)."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return True
    if isinstance(m, nn.modules.instancenorm._InstanceNorm) or hasattr(m, "num_groups"):
        return False
    return hasattr(m, "num_features") and hasattr(m, "running_mean") and hasattr(m, "running_var") \
        and hasattr(m, "eps")


def _inplace_abn_classes() -> tuple[type, ...]:
    """The In-Place ABN classes (batch norm + leaky ReLU), found by module so a changed layout still matches."""
    from ..memory import inplace_abn
    return tuple(c for c in vars(inplace_abn).values() if isinstance(c, type) and issubclass(c, nn.Module)
                 and c.__module__ == inplace_abn.__name__)


def _remainder(bn: nn.Module) -> nn.Module | str:
    """What is left of ``bn`` once folded (nothing: ``nn.Identity``, or the activation of a norm module that
    applies one), or a string: why ``bn`` is not known to be a plain affine map in eval."""
    if isinstance(bn, _BatchNormAct):
        if bn.activation == "relu":
            return nn.ReLU(inplace=True)
        if bn.activation == "leaky_relu":
            return nn.LeakyReLU(bn.negative_slope, inplace=True)
        if bn.activation == "gelu":
            return nn.GELU()
        return f"unknown activation {bn.activation!r} of {type(bn).__name__}"
    if isinstance(bn, _inplace_abn_classes()):
        slope = getattr(bn, "slope", getattr(bn, "activation_param", None))
        if slope is None:
            return f"the leaky ReLU slope of {type(bn).__name__} is not known"
        return nn.LeakyReLU(float(slope), inplace=True)
    if type(bn).forward in _plain_norm_forwards():
        return nn.Identity()
    return (f"{type(bn).__name__} has its own forward, which may compute more than batch norm (e.g. an "
            f"activation); fold_batchnorm folds only norms it knows")


def _out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _pair_problem(layer: nn.Module, bn: nn.Module) -> str | None:
    """Why ``bn(layer(.))`` cannot become one layer in eval, or ``None``."""
    if not isinstance(layer, _FOLDABLE):
        return f"{type(layer).__name__} is not a Conv or Linear layer: only Conv and Linear layers fold"
    if not getattr(bn, "track_running_stats", True) or getattr(bn, "running_mean", None) is None \
            or getattr(bn, "running_var", None) is None:
        return ("it has no running statistics (track_running_stats=False), so it normalizes with batch "
                "statistics even at inference")
    if bn.num_features != _out_channels(layer):
        return (f"{type(layer).__name__} has {_out_channels(layer)} output channels vs {bn.num_features} "
                f"features")
    return None


@torch.no_grad()
def fold_pair(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A new conv/linear layer equal to ``bn(layer(x))`` with ``bn``'s running statistics (its eval mode, not
    counting an activation ``bn`` may apply: see :func:`fold_batchnorm`). ``layer``: ``nn.Conv1d/2d/3d``
    (any groups, dilation, padding mode, with or without bias) or ``nn.Linear``; the result always has a bias.
    Computed in float64 and stored in the layer's dtype. Raises ``ValueError`` naming the reason when the
    pair cannot fold (another layer type, no running statistics, mismatched channels)."""
    problem = _pair_problem(layer, bn)
    if problem is not None:
        raise ValueError(f"cannot fold {type(bn).__name__} into {type(layer).__name__}: {problem}")
    w = layer.weight.detach()
    hi = torch.float64 if w.device.type != "mps" else torch.float32
    scale = bn.running_var.detach().to(hi).add(bn.eps).rsqrt()
    gamma, beta = getattr(bn, "weight", None), getattr(bn, "bias", None)
    if gamma is not None:
        scale = scale * gamma.detach().to(hi)
    out_ch = _out_channels(layer)
    bias = layer.bias.detach().to(hi) if layer.bias is not None else torch.zeros(out_ch, dtype=hi, device=w.device)
    new_bias = (bias - bn.running_mean.detach().to(hi)) * scale
    if beta is not None:
        new_bias = new_bias + beta.detach().to(hi)
    fused = copy.deepcopy(layer)
    fused.weight = nn.Parameter((w.to(hi) * scale.view(-1, *([1] * (w.ndim - 1)))).to(w.dtype))
    fused.bias = nn.Parameter(new_bias.to(w.dtype))
    return fused


@dataclass
class FoldReport:
    """What :func:`fold_batchnorm` did: ``folded`` as ``(layer path, norm path)`` pairs, ``not_folded`` as
    ``(norm path, reason)``, ``notes`` (modules that could not be traced, assumptions made)."""
    folded: list[tuple[str, str]] = field(default_factory=list)
    not_folded: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"folded {len(self.folded)} batch norm(s), left {len(self.not_folded)}"]
        lines += [f"  folded {n} into {l}" for l, n in self.folded]
        lines += [f"  not folded {n}: {r}" for n, r in self.not_folded]
        lines += [f"  note: {t}" for t in self.notes]
        return "\n".join(lines)


class _BatchedInputOnly:
    """Forward pre-hook of a Linear/Conv1d folded without ``example_inputs``: the fold assumed the layer's
    output channels are the norm's dim 1, true only for ``ndim``-D (batched) inputs; any other input raises."""

    def __init__(self, ndim: int, path: str) -> None:
        self.ndim, self.path = ndim, path

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.dim() != self.ndim:
            raise ValueError(f"{self.path} had a batch norm folded into it assuming a {self.ndim}-D (batched) input, "
                             f"got a {x.dim()}-D one: the norm normalized dim 1, not this layer's outputs; fold "
                             f"with fold_batchnorm(model, example_inputs=...) so the shape is checked")


class _Tracer(fx.Tracer):
    """torch.fx's tracer that keeps norms and conv/linear layers (ours too) as calls to the module."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_norm(m) or isinstance(m, _FOLDABLE) or super().is_leaf_module(m, qualname)


#: the ``torch.fx`` tracer of the analysis, for other graph passes (:mod:`traintricks.surgery`): torch's layers, every
#: norm and conv/linear layer (ours too) recorded as one ``call_module`` node
LeafTracer = _Tracer


def _get_path(root: nn.Module, target: str):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


def _path_in(mods: dict[str, nn.Module], sub: nn.Module) -> str:
    return next((n for n, m in mods.items() if m is sub), type(sub).__name__)


def _runs_as_sequential(m: nn.Module) -> bool:
    """``m``'s forward is ``nn.Sequential``'s (a branch with stochastic depth counts: its base class decides)."""
    from .stochastic_depth import StochasticDepthBranch
    cls = type(m).base_class if isinstance(m, StochasticDepthBranch) else type(m)
    return cls.forward is nn.Sequential.forward


class _Uses:
    """Where the whole model uses each conv/linear layer and norm: ``root`` traced with ``torch.fx`` (and, in it,
    every leaf module that has submodules, traced as its own root), so that a pair is folded -- in a Sequential in
    place, or in a submodule's graph -- only when *every* call of the layer feeds the norm alone and every call of
    the norm reads the layer's output, and neither's parameters or buffers are read directly. What lies under a
    forward that cannot be traced is known only from a run on ``example_inputs`` (calls and parameter reads seen);
    without them nothing there is folded (the reason is reported)."""

    def __init__(self, root: nn.Module, outside: dict[int, str] | None = None) -> None:
        self.outside = outside                          # from a run on example inputs, when given
        self.calls: dict[int, int] = {}                 # id(module) -> calls seen
        self.bad: dict[int, str] = {}                   # id(module) -> why it cannot fold (used elsewhere)
        self.feeds: dict[int, set[int]] = {}            # id(layer) -> ids of the norms its calls feed
        self.fed: dict[int, set[int]] = {}              # id(norm) -> ids of the layers its calls read
        self.notes: list[str] = []
        self._seen: set[int] = set()
        self._analyse(root, "")

    def _analyse(self, m: nn.Module, path: str) -> None:
        if id(m) in self._seen:
            return
        self._seen.add(id(m))
        from ..memory.recomputation import ForwardState
        state = ForwardState(m)                              # tracing runs the forward: undo its side effects
        try:
            graph = _Tracer().trace(m)
        except Exception as e:                               # noqa: BLE001 -- any failure: unknown uses
            state.rollback()
            what = path or type(m).__name__
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if self.outside is not None:                     # the run on example_inputs saw every use
                for sub in m.modules():
                    if sub is not m and id(sub) in self.outside:
                        self.bad.setdefault(id(sub), self.outside[id(sub)])
                self.notes.append(f"could not trace {what} with torch.fx ({why}); the uses of the layers and norms "
                                  f"under it were checked by running example_inputs")
                return
            reason = (f"the forward of {what} cannot be traced with torch.fx ({why}), so it is not known whether it "
                      f"uses this layer or norm elsewhere")
            for sub in m.modules():
                if sub is not m:
                    self.bad.setdefault(id(sub), reason)
            self.notes.append(f"could not trace {what} with torch.fx ({why}); pairs under it were not folded (pass "
                              f"example_inputs= to check their uses by running the model)")
            return
        state.rollback()
        mods = dict(m.named_modules(remove_duplicate=False))
        prefix = path + "." if path else ""
        storages = {t.untyped_storage().data_ptr(): sub for sub in mods.values()
                    if isinstance(sub, _FOLDABLE) or _is_norm(sub)
                    for t in list(sub._parameters.values()) + list(sub._buffers.values())
                    if t is not None and t.untyped_storage().data_ptr()}
        for node in graph.nodes:
            if node.op == "get_attr":
                # a parameter or buffer read directly, or a tensor computed from one at trace time (a constant
                # sharing its storage, e.g. ``bn.running_var.view(...)``)
                owner = node.target.rsplit(".", 1)[0] if "." in node.target else ""
                sub = mods.get(owner)
                if sub is None or sub is m:
                    t = _get_path(m, node.target)
                    sub = storages.get(t.untyped_storage().data_ptr()) if isinstance(t, torch.Tensor) else None
                if sub is not None and sub is not m:
                    self.bad[id(sub)] = (f"the forward of {path or type(m).__name__} reads the parameters or buffers "
                                         f"of {prefix}{_path_in(mods, sub)} directly: folding would change what it "
                                         f"reads")
                continue
            if node.op != "call_module":
                continue
            sub = mods[node.target]
            self.calls[id(sub)] = self.calls.get(id(sub), 0) + 1
            if isinstance(sub, _FOLDABLE):
                users = list(node.users)
                if len(users) == 1 and users[0].op == "call_module" and _is_norm(mods[users[0].target]) \
                        and users[0].args[:1] == (node,) and len(users[0].args) == 1 and not users[0].kwargs:
                    self.feeds.setdefault(id(sub), set()).add(id(mods[users[0].target]))
                else:
                    who = ", ".join(str(u.target if u.op == "call_module" else u.name) for u in users) or "nothing"
                    self.bad.setdefault(id(sub), f"{prefix}{node.target} is also called where its output goes to "
                                                 f"{who}: folding would change what they see")
            elif _is_norm(sub):
                src = node.args[0] if node.args else None
                if isinstance(src, fx.Node) and src.op == "call_module" and isinstance(mods[src.target], _FOLDABLE) \
                        and len(node.args) == 1 and not node.kwargs:
                    self.fed.setdefault(id(sub), set()).add(id(mods[src.target]))
                else:
                    what = getattr(src, "target", src)
                    self.bad.setdefault(id(sub), f"{prefix}{node.target} is also called on the output of "
                                                 f"{getattr(what, '__name__', what)}, not of its layer")
            elif any(True for _ in sub.children()):
                self._analyse(sub, prefix + node.target)     # a leaf with submodules (ours, torch's): inside it

    def problem(self, layer: nn.Module, bn: nn.Module, paths: dict[int, str]) -> str | None:
        """Why the model's other uses of ``layer``/``bn`` forbid folding them together, or ``None``."""
        for m in (layer, bn):
            if id(m) in self.bad:
                return self.bad[id(m)]
        feeds, fed = self.feeds.get(id(layer), set()), self.fed.get(id(bn), set())
        if feeds - {id(bn)} or fed - {id(layer)}:
            return (f"{paths.get(id(layer))} or {paths.get(id(bn))} is also called with another partner "
                    f"(a shared layer or norm)")
        return None


class _Folder:
    """Folds the pairs of ``root`` found by :class:`_Uses`. ``inplace=False`` (:func:`fold_batchnorm`, on a copy):
    a module whose forward calls a pair becomes a ``torch.fx.GraphModule`` without the norm's call;
    ``inplace=True`` (:func:`traintricks.surgery.fold_batchnorm`): every module keeps its class and forward, the
    folded norm's attribute becomes ``nn.Identity`` (or its activation) -- the use analysis guarantees the norm is
    called only on its layer's output, which it then returns unchanged. Either way the layer object stays and
    receives the folded weight and bias (new parameters)."""

    def __init__(self, root: nn.Module, out_ndim: dict[int, int] | None, outside: dict[int, str] | None,
                 inplace: bool = False) -> None:
        self.inplace = inplace
        self.paths = {id(m): name for name, m in root.named_modules()}
        self.norms = [m for m in root.modules() if _is_norm(m)]
        self.out_ndim = out_ndim                       # id(layer) -> ndim of its output on example inputs
        self.folded: dict[int, str] = {}               # id(norm) -> layer path
        self.reasons: dict[int, str] = {}              # id(norm) -> why not (last attempt)
        self.notes: list[str] = []
        self.uses = _Uses(root, outside)
        self.notes += self.uses.notes

    # ------------------------------------------------------------------ one pair
    def problem(self, layer: nn.Module, bn: nn.Module) -> str | None:
        """Why the pair is not exactly one layer in eval, or ``None``."""
        problem = _pair_problem(layer, bn)
        if problem is not None:
            return problem
        if not _layer_forward_ok(layer):
            return f"{type(layer).__name__} has its own forward (not a plain Conv/Linear)"
        if bn.training:
            return "it is in training mode (normalizes with batch statistics)"
        elsewhere = self.uses.problem(layer, bn, self.paths)
        if elsewhere is not None:
            return elsewhere
        for m in (layer, bn):
            if m._forward_hooks or m._forward_pre_hooks or getattr(m, "parametrizations", None) is not None:
                return f"{self.paths.get(id(m), type(m).__name__)} has forward hooks or parametrizations"
        rem = _remainder(bn)
        if isinstance(rem, str):
            return rem
        want = 2 if isinstance(layer, nn.Linear) else layer.weight.ndim
        got = self.out_ndim.get(id(layer)) if self.out_ndim is not None else None
        if got is not None and got != want:
            return (f"the output of {self.paths.get(id(layer))} is {got}-D: batch norm's channel dim 1 is not the "
                    f"layer's output channel")
        if got is None and isinstance(layer, (nn.Linear, nn.Conv1d)):
            self.notes.append(f"{self.paths.get(id(layer))} -> {self.paths.get(id(bn))}: assumed a batched input "
                              f"(channel dim 1 = the layer's outputs); pass example_inputs= to check")
        return None

    def fold(self, layer: nn.Module, bn: nn.Module) -> tuple[nn.Module, nn.Module]:
        """``(layer, remainder)``: ``layer`` itself given the folded weight and bias (new parameters, so a weight
        it shared with another module is not changed there), and what replaces ``bn``."""
        folded, rem = fold_pair(layer, bn), _remainder(bn)
        layer.weight, layer.bias = folded.weight, folded.bias
        fused = layer
        if isinstance(layer, (nn.Linear, nn.Conv1d)) and (self.out_ndim is None or id(layer) not in self.out_ndim):
            # folded on the assumption of a batched input (channel dim 1 = the layer's outputs): refuse any
            # other input rather than silently compute what the norm would not have (a shape check, no sync)
            fused.register_forward_pre_hook(_BatchedInputOnly(2 if isinstance(layer, nn.Linear) else 3,
                                                              self.paths.get(id(layer), type(layer).__name__)))
        self.folded[id(bn)] = self.paths.get(id(layer), type(layer).__name__)
        self.reasons.pop(id(bn), None)
        return fused, rem

    def no(self, bn: nn.Module, reason: str) -> None:
        if id(bn) not in self.folded:
            self.reasons[id(bn)] = reason

    # ------------------------------------------------------------------ the module tree
    def module(self, m: nn.Module) -> nn.Module:
        """``m`` with its pairs folded (in place where its class is kept, or a new GraphModule)."""
        if not any(_is_norm(c) and id(c) not in self.folded for c in m.modules()):
            return m
        for name, child in list(m._modules.items()):
            if child is not None:
                new = self.module(child)
                if new is not child:
                    m._modules[name] = new
        if _runs_as_sequential(m):
            self.sequential(m)
            return m
        if not m._modules or _is_norm(m) or not any(_is_norm(c) and id(c) not in self.folded for c in m.modules()):
            return m
        return self.graph(m)

    def sequential(self, seq: nn.Sequential) -> None:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            (layer, lparent, lname), (bn, bparent, bname) = _edge(seq, a, last=True), _edge(seq, b, last=False)
            if not _is_norm(bn) or id(bn) in self.folded:
                continue
            if not isinstance(layer, _FOLDABLE):
                self.no(bn, f"its input is the output of {type(layer).__name__}, not of a Conv/Linear layer")
                continue
            problem = self.problem(layer, bn)
            if problem is not None:
                self.no(bn, problem)
                continue
            lparent._modules[lname], bparent._modules[bname] = self.fold(layer, bn)

    def graph(self, m: nn.Module) -> nn.Module:
        path = self.paths.get(id(m), "")
        from ..memory.recomputation import ForwardState
        state = ForwardState(m)                              # tracing runs the forward: undo its side effects
        try:
            graph = _Tracer().trace(m)
        except Exception as e:                               # untraceable forward: its children were folded
            state.rollback()
            self.notes.append(f"could not trace {path or type(m).__name__} with torch.fx ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); folded only inside its submodules")
            return m
        state.rollback()
        mods = dict(m.named_modules(remove_duplicate=False))
        by_module: dict[int, int] = {}
        for node in graph.nodes:
            if node.op == "call_module":
                by_module[id(mods[node.target])] = by_module.get(id(mods[node.target]), 0) + 1
        changed = False
        for node in list(graph.nodes):
            if node.op != "call_module" or not _is_norm(mods[node.target]):
                continue
            bn = mods[node.target]
            if id(bn) in self.folded:
                continue
            src = node.args[0] if node.args else None
            if len(node.args) != 1 or node.kwargs:
                self.no(bn, "called with more than its input")
                continue
            if not isinstance(src, fx.Node) or src.op != "call_module" or not isinstance(mods[src.target], _FOLDABLE):
                what = src.target if isinstance(src, fx.Node) and src.op == "call_module" else \
                    getattr(src, "target", src)
                what = getattr(what, "__name__", what)
                self.no(bn, f"its input is the output of {what}, not of a Conv/Linear layer")
                continue
            layer = mods[src.target]
            if len(src.users) != 1:
                others = ", ".join(str(u) for u in src.users if u is not node)
                self.no(bn, f"the output of {self.paths.get(id(layer), src.target)} is also used by {others}: "
                            f"folding would change what they see")
                continue
            lpath = src.target + "."
            if any(n.op == "get_attr" and n.target.startswith(lpath) for n in graph.nodes):
                self.no(bn, f"the forward also reads {self.paths.get(id(layer), src.target)}'s parameters "
                            f"directly: folding would change what it reads")
                continue
            if by_module[id(layer)] > 1 or by_module[id(bn)] > 1:
                self.no(bn, "the layer or the norm is called more than once (shared module)")
                continue
            problem = self.problem(layer, bn)
            if problem is not None:
                self.no(bn, problem)
                continue
            fused, rem = self.fold(layer, bn)
            _set(m, src.target, fused)
            if self.inplace:
                _set(m, node.target, rem)                    # the forward keeps calling it: now the identity
            elif isinstance(rem, nn.Identity):
                node.replace_all_uses_with(src)
                graph.erase_node(node)
            else:
                _set(m, node.target, rem)
            changed = True
        if not changed or self.inplace:
            return m
        gm = fx.GraphModule(m, graph, class_name=type(m).__name__)
        gm.training = m.training
        return gm

    def report(self) -> FoldReport:
        rep = FoldReport(notes=list(dict.fromkeys(self.notes)))
        for bn in self.norms:
            p = self.paths.get(id(bn), type(bn).__name__)
            if id(bn) in self.folded:
                rep.folded.append((self.folded[id(bn)], p))
            else:
                rep.not_folded.append((p, self.reasons.get(
                    id(bn), "its input is not visibly the output of a Conv/Linear layer (no Sequential neighbour, "
                            "no traced graph)")))
        return rep


def _edge(seq: nn.Module, name: str, last: bool) -> tuple[nn.Module, nn.Module, str]:
    """The module applied first (``last=False``) or last in ``seq[name]``, through plain nested Sequentials,
    with its parent and name there."""
    parent, module = seq, seq._modules[name]
    while _runs_as_sequential(module) and len(module) > 0:
        name = list(module._modules)[-1 if last else 0]
        parent, module = module, module._modules[name]
    return module, parent, name


def _set(root: nn.Module, target: str, value: nn.Module) -> None:
    *path, name = target.split(".")
    owner = root
    for p in path:
        owner = getattr(owner, p)
    setattr(owner, name, value)


def _run_uses(model: nn.Module, example_inputs) -> tuple[dict[int, int], dict[int, str]]:
    """Run ``model`` on ``example_inputs`` (no_grad, every state change rolled back) and return the ndim of each
    conv/linear layer's output, and for each layer or norm used other than as a member of a Sequential, why: called
    by a module that is not a Sequential holding it, or its parameters/buffers passed to a function outside its own
    forward (seen by a ``TorchFunctionMode``)."""
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_leaves
    from ..memory.recomputation import ForwardState
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    state = ForwardState(model, [t for t in inputs if isinstance(t, torch.Tensor)])
    paths = {id(m): n for n, m in model.named_modules()}
    watched = [m for m in model.modules() if isinstance(m, _FOLDABLE) or _is_norm(m)]
    owner = {id(t): m for m in watched for t in list(m._parameters.values()) + list(m._buffers.values())
             if t is not None}
    holders: dict[int, set[int]] = {}
    for m in model.modules():
        if _runs_as_sequential(m):
            for c in m.children():
                holders.setdefault(id(c), set()).add(id(m))
    ndims: dict[int, int] = {}
    outside: dict[int, str] = {}
    stack: list[nn.Module] = []

    def pre(mod, args):
        if (isinstance(mod, _FOLDABLE) or _is_norm(mod)) and \
                (not stack or id(stack[-1]) not in holders.get(id(mod), ())):
            caller = paths.get(id(stack[-1]), "?") if stack else "the caller"
            outside.setdefault(id(mod), f"{paths.get(id(mod))} is called by {caller or type(model).__name__}, not "
                                        f"(only) as a member of a Sequential: folding could change what it sees")
        stack.append(mod)

    def post(mod, args, out):
        stack.pop()
        if isinstance(mod, _FOLDABLE) and isinstance(out, torch.Tensor):
            ndims[id(mod)] = out.ndim

    class _Reads(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            for t in tree_leaves((args, kwargs)):
                m = owner.get(id(t)) if isinstance(t, torch.Tensor) else None
                if m is not None and (not stack or stack[-1] is not m):
                    outside.setdefault(id(m), f"the parameters or buffers of {paths.get(id(m))} are read outside "
                                              f"its forward: folding would change what is read")
            return func(*args, **kwargs)

    hooks = [h for m in model.modules() for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        with torch.no_grad(), _Reads():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
        state.rollback()                                     # the check run changes no state of the copy
    return ndims, outside


def fold_model(model: nn.Module, *, example_inputs=None, inplace: bool) -> tuple[nn.Module, FoldReport]:
    """The analysis and folding behind :func:`fold_batchnorm` (on a copy, ``inplace=False``: modules that call a
    pair become ``GraphModule`` s) and :func:`traintricks.surgery.fold_batchnorm` (``inplace=True``: ``model``
    itself, each folded norm's attribute set to ``nn.Identity`` or its activation, every class kept). Changes
    ``model``; returns the folded model (``model`` itself unless the root became a ``GraphModule``) and the
    report. ``model`` must be in eval mode (not checked here)."""
    out_ndim, outside = _run_uses(model, example_inputs) if example_inputs is not None else (None, None)
    folder = _Folder(model, out_ndim, outside, inplace=inplace)
    model = folder.module(model)
    return model, folder.report()


def fold_batchnorm(model: nn.Module, *, return_report: bool = False, example_inputs=None):
    """A copy of ``model`` (in eval mode) with every batch norm whose input is a Conv/Linear output folded into
    that layer, exactly (:func:`fold_pair`); a norm module that applies an activation (``BatchNormAct*``,
    ``InPlaceABN``) leaves its activation in its place.

    Pairs are neighbours in a ``nn.Sequential`` (nested ones too; folded in place, the classes kept) or calls
    in any module's forward, found in its ``torch.fx`` graph (``self.bn(self.conv(x))``, downsample branches):
    such a module is returned as a ``torch.fx.GraphModule`` with the same submodule paths and ``state_dict``
    keys, less the folded norms' (a folded layer gains a ``bias``); a forward torch.fx cannot trace is left as
    it is and only its submodules are folded (reported). A pair is folded only where it is exactly equivalent:
    the layer's output is used by the norm alone, each is called once, the norm (torch's, ours, batch renorm)
    uses its running statistics, the layer is a plain Conv1d/2d/3d (any groups, dilation, bias) or Linear.

    Args:
        model: the model, in eval mode (``ValueError`` otherwise: training-mode batch norm uses batch statistics).
        return_report: also return a :class:`FoldReport` (folded pairs, norms left and why, notes).
        example_inputs: optional input (or tuple of inputs) to check that each layer's output channel is the
            norm's channel dim (a ``Linear`` on a 3-D input is not folded then); without it that is assumed
            (noted in the report).

    Returns the folded model (``model.folded_batchnorms``: the count, ``model.fold_report``: the report), or
    ``(model, report)`` with ``return_report=True``. Warns when nothing was folded.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_batchnorm takes an nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("fold_batchnorm: the model is in training mode, where batch norm normalizes with batch "
                         "statistics and cannot be folded; call model.eval() first")
    folded_model, report = fold_model(copy.deepcopy(model), example_inputs=example_inputs, inplace=False)
    if not report.folded:
        why = "; ".join(f"{n}: {r}" for n, r in report.not_folded) or "the model has no batch norm"
        warn(f"fold_batchnorm folded nothing ({why})")
    folded_model.folded_batchnorms = len(report.folded)
    folded_model.fold_report = report
    return (folded_model, report) if return_report else folded_model
