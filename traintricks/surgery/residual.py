"""Residual branches of any model: find every ``y = x + f(x)`` by tracing, then give the branches stochastic depth,
ShakeDrop or a zero initialization, in place.

**Finding them.** Each module whose forward holds the additions is traced with :mod:`torch.fx` (torch's layers and
ours kept as single calls; the whole model first, and when its forward cannot be traced, each child on its own,
the untraceable parts named in the report's notes). An addition ``a + b`` (``operator.add``/``iadd``, ``torch.add``,
``Tensor.add``) of two tensors is *residual* when one operand lies on the other's input path: from their nearest
common ancestor ``c`` in the graph, the operand with the shorter path (counted in layers: a module call counts the modules it
holds) is the **skip** (``x`` itself, or
torchvision's ``downsample``) and the other the **branch** ``f``. An addition of unrelated tensors (``x +
self.pos``) or of two equally long paths (two parallel branches) is not residual.

**Acting on a branch without renaming anything.** What is added acts on the branch's *output*, through its last
module: the outermost module whose output reaches the addition alone (directly, or through ``transpose``/``permute``/
``flatten``/``contiguous`` calls that keep dim 0, with which a per-sample scale commutes: a Mixer block's
``x + self.token_mix(h.transpose(1, 2)).transpose(1, 2)``) and that is called once. It gets a forward hook (a
module-level function) whose parameterless helper module is a child of the hooked module (``layer1.0.bn2.
stochastic_depth``): no ``state_dict`` key is added or renamed, ``copy.deepcopy`` copies the helper with the
model, and ``train()``/``eval()`` reach it. A branch that ends in another operation (``F.gelu(...)``, a tuple
element) is reported as skipped, with the reason.

Sources: stochastic depth -- Huang, Sun, Liu, Sedra & Weinberger 2016, arXiv:1603.09382 (per-sample "drop path" as
timm and torchvision); ShakeDrop -- Yamada, Iwamura, Akiba & Kise 2018, arXiv:1802.02375; zero gamma -- Goyal et
al. 2017, arXiv:1706.02677 (also He et al. 2019, arXiv:1812.01187).
"""
from __future__ import annotations

import heapq
import operator
from dataclasses import dataclass

import torch
from torch import fx, nn

from ..memory import ForwardState
from ..nn import StochasticDepth, StochasticDepthBranch, add_stochastic_depth as _paper_depth
from ..nn.shake import ShakeDropScale
from .report import SurgeryReport
from .select import Selector, describe, select

_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_", "__add__", "__iadd__"}
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_LOOKED_FOR = "residual additions (residual blocks y = x + f(x))"


# ------------------------------------------------------------------------------------------------------ finding
@dataclass(frozen=True)
class ResidualAdd:
    """One residual addition ``y = skip + branch`` found in a model's traced graph.

    Attributes:
        location: path of the module whose forward holds the addition (``"layer1.0"``; ``""``: the model).
        node: the addition's node name in that module's traced graph (``"add"``, ``"iadd_1"``).
        branch: path of the branch's last module, whose output goes to the addition alone (``"layer1.0.bn2"``,
            ``"blocks.0.attn"``), or ``None`` when the branch does not end in such a module.
        branch_op: the branch's last operation, in words (``"bn2"``, ``"transpose"``).
        skip: ``"identity"`` when the skip is the common input itself, else its last module or operation
            (``"layer2.0.downsample.1"``).
        last_layer: path of the branch's parameterized module nearest to its end (a norm, conv or linear layer for
            :func:`zero_init_residual`), or ``None``.
        separable: whether ``branch`` takes one input and holds every convolution and linear layer of the branch
            (a twin of it is the whole branch: Shake-Shake).
        why_not: why ``branch`` is ``None`` (empty otherwise).
    """
    location: str
    node: str
    branch: str | None
    branch_op: str
    skip: str
    last_layer: str | None = None
    separable: bool = False
    why_not: str = ""


class _Tracer(fx.Tracer):
    """torch.fx's tracer with torch's layers and ours (``traintricks.nn``) kept as single module calls."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m).__module__.startswith("traintricks.nn") or super().is_leaf_module(m, qualname)


def _is_norm(m: nn.Module) -> bool:
    """A normalization layer: torch's batch/instance/group/layer norms, or a class named ``*Norm*`` (ours, timm's)."""
    return isinstance(m, _NORMS) or any("Norm" in c.__name__ for c in type(m).__mro__[:-1])


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        return len(node.args) >= 2
    return node.op == "call_method" and node.target in _ADD_METHODS and len(node.args) >= 2


def _distances(start: fx.Node, weight) -> dict[fx.Node, int]:
    """The length of the shortest path from every ancestor of ``start`` (and itself) to ``start``, counted in
    layers: each node on it weighs ``weight(node)`` (both ends included)."""
    dist = {start: weight(start)}
    heap = [(dist[start], 0, start)]
    tie = 1
    while heap:
        d, _t, n = heapq.heappop(heap)
        if d > dist[n]:
            continue
        for a in n.all_input_nodes:
            da = d + weight(a)
            if a not in dist or da < dist[a]:
                dist[a] = da
                heapq.heappush(heap, (da, tie, a))
                tie += 1
    return dist


def _dim(v, default):
    return v if isinstance(v, int) else default


def _keeps_batch_dim(node: fx.Node) -> bool:
    """A shape operation with which a per-sample (dim 0) scale commutes: its only tensor input is ``args[0]``."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if node.op not in ("call_method", "call_function") or not node.args or not isinstance(node.args[0], fx.Node):
        return False
    if node.op == "call_function" and getattr(node.target, "__module__", "") not in ("torch", "torch.functional") \
            and node.target not in (torch.transpose, torch.permute, torch.flatten):
        return False
    rest = node.args[1:]
    if name == "contiguous":
        return True
    if name == "transpose":
        dims = [_dim(d, 0) for d in rest[:2]] or [node.kwargs.get("dim0", 0), node.kwargs.get("dim1", 0)]
        return len(dims) == 2 and all(isinstance(d, int) and d != 0 for d in dims)
    if name == "permute":
        dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
        return len(dims) > 0 and dims[0] == 0
    if name == "flatten":
        start = rest[0] if rest else node.kwargs.get("start_dim", 0)
        return isinstance(start, int) and start != 0
    return False


def _describe(node: fx.Node, prefix: str) -> str:
    if node.op == "call_module":
        return _join(prefix, node.target)
    if node.op == "placeholder":
        return f"input {node.target}"
    return str(getattr(node.target, "__name__", node.target))


class _Graph:
    """One traced module: its residual additions, in order."""

    def __init__(self, root: nn.Module, graph: fx.Graph, prefix: str) -> None:
        self.root, self.graph, self.prefix = root, graph, prefix
        self.nodes = list(graph.nodes)
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.modules = dict(root.named_modules())
        calls: dict[str, int] = {}
        for n in self.nodes:
            for _key, (qual, _t) in (n.meta.get("nn_module_stack") or {}).items():
                calls.setdefault(qual, set()).add(_key)
        self.calls = {q: len(keys) for q, keys in calls.items()}
        self._weights: dict[fx.Node, int] = {}

    def weight(self, node: fx.Node) -> int:
        """A node's length in layers: a module call counts its modules (a wrapper of a whole branch, e.g.
        :class:`~traintricks.nn.ShakeShake`, is as long as the branch), any other operation 1."""
        w = self._weights.get(node)
        if w is None:
            w = sum(1 for _ in self.modules[node.target].modules()) if node.op == "call_module" else 1
            self._weights[node] = w
        return w

    def stack(self, node: fx.Node) -> dict:
        return node.meta.get("nn_module_stack") or {}

    def adds(self) -> list[ResidualAdd]:
        out = []
        for node in self.nodes:
            if not _is_add(node):
                continue
            a, b = node.args[0], node.args[1]
            if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)) or a is b:
                continue
            da, db = _distances(a, self.weight), _distances(b, self.weight)
            common = [n for n in da if n in db and n.op != "get_attr"]
            if not common:
                continue                                             # x + self.pos: unrelated tensors
            nca = max(common, key=self.index.__getitem__)
            if da[nca] == db[nca]:
                continue                                             # two parallel branches
            skip, branch, dbranch = (a, b, db) if da[nca] < db[nca] else (b, a, da)
            out.append(self._residual(node, skip, branch, dbranch, nca))
        return out

    def _location(self, node: fx.Node) -> str:
        stack = self.stack(node)
        return _join(self.prefix, list(stack.values())[-1][0]) if stack else self.prefix

    def _residual(self, add: fx.Node, skip: fx.Node, branch: fx.Node, dist: dict, nca: fx.Node) -> ResidualAdd:
        inside = set(_distances(nca, self.weight))
        path = [n for n in dist if n not in inside and n.op not in ("get_attr", "placeholder")]
        skip_what = "identity" if skip is nca else _describe(skip, self.prefix)
        # the branch's parameterized module nearest to its end (zero init)
        last = None
        for n in sorted((n for n in path if n.op == "call_module"),
                        key=lambda n: (dist[n], -self.index[n])):
            m = self.modules[n.target]
            if next(m.parameters(), None) is not None or _is_norm(m):
                last = _join(self.prefix, n.target)
                break
        # the module whose output is the branch's output: back through shape operations with one user each
        end, why = branch, ""
        if len(branch.users) != 1:
            why = f"the branch's output ({_describe(branch, self.prefix)}) is also used elsewhere"
        add_stack = self.stack(add)
        while not why and end.op != "call_module" and not self._candidates(end, add_stack) \
                and _keeps_batch_dim(end) and len(end.args[0].users) == 1:
            end = end.args[0]
        hook, separable = None, False
        if not why:
            hook, why = self._hook_module(add, end)
        if hook is not None:
            qual = hook[len(self.prefix) + 1:] if self.prefix else hook
            scope = [n for n in self.nodes if any(q == qual for q, _ in self.stack(n).values())]
            inputs = {a for n in scope for a in n.all_input_nodes if a not in scope and a.op != "get_attr"}
            layers = [n for n in path if n.op == "call_module" and isinstance(self.modules[n.target], _LAYERS)]
            separable = len(inputs) == 1 and bool(layers) and all(n in scope for n in layers)
        return ResidualAdd(self._location(add), add.name, hook, _describe(branch, self.prefix), skip_what, last,
                           separable, why)

    def _candidates(self, node: fx.Node, add_stack: dict) -> list[tuple[str, str]]:
        """The modules (key, path) whose forward computed ``node`` and not the addition's, outermost first."""
        return [(k, q) for k, (q, _t) in self.stack(node).items() if k not in add_stack]

    def _hook_module(self, add: fx.Node, end: fx.Node) -> tuple[str | None, str]:
        add_stack = self.stack(add)
        for key, qual in self._candidates(end, add_stack):           # outermost first
            scope = [n for n in self.nodes if key in self.stack(n)]
            outputs = [n for n in scope if any(u not in scope for u in n.users)]
            if outputs != [end]:
                continue
            if self.calls.get(qual, 1) > 1:
                return None, f"{_join(self.prefix, qual)} is called more than once (a hook would act on every call)"
            return _join(self.prefix, qual), ""
        return None, (f"the branch ends in {_describe(end, self.prefix)}, not in a module whose output goes to the "
                      f"addition alone")


def _analyse(model: nn.Module) -> tuple[list[ResidualAdd], list[str]]:
    """Every residual addition of ``model`` in execution order, and notes on what could not be traced."""
    found: list[ResidualAdd] = []
    notes: list[str] = []
    tracer_leaf = _Tracer()

    def visit(m: nn.Module, path: str) -> None:
        if tracer_leaf.is_leaf_module(m, path) and path:
            return
        state = ForwardState(m)                  # tracing runs the forward's Python: undo its side effects
        try:
            graph = _Tracer().trace(m)
        except Exception as e:                   # noqa: BLE001 -- any failure: trace the children instead
            state.rollback()
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            children = [(n, c) for n, c in m.named_children()]
            notes.append(f"could not trace {path or '<model>'} ({type(m).__name__}) with torch.fx ({why}); "
                         + ("its submodules were traced one by one" if children else "it has no submodules")
                         + " -- additions in its own forward are not found")
            for name, child in children:
                visit(child, _join(path, name))
            return
        state.rollback()
        found.extend(_Graph(m, graph, path).adds())

    visit(model, "")
    return found, notes


def find_residual_additions(model: nn.Module) -> list[ResidualAdd]:
    """The residual additions ``y = x + f(x)`` of ``model`` (see the module docstring), in execution order.

    A torchvision-style ResNet-18 has 8 (downsample branches are skips); a ViT or MLP-Mixer block 2. The model is
    traced, not run (its buffers and attributes are restored afterwards). Raises ``TypeError`` for a non-Module."""
    _check(model, "find_residual_additions")
    return _analyse(model)[0]


# ------------------------------------------------------------------------------------------------------ helpers
def _check(model, name: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} takes an nn.Module, got {type(model).__name__}")


def _rates(n: int, rate: float, rule: str, name: str) -> list[float]:
    if rule == "linear":
        return [rate * l / n for l in range(1, n + 1)]
    if rule == "uniform":
        return [rate] * n
    raise ValueError(f"{name}: rule must be 'linear' (the paper's, rate * l / L for the l-th of L branches) or "
                     f"'uniform', got {rule!r}")


def _residuals(model: nn.Module, report: SurgeryReport, where: Selector | None) -> list[ResidualAdd]:
    adds, notes = _analyse(model)
    report.notes.extend(notes)
    if where is None:
        return adds
    chosen = {name for name, _m in select(model, where)}
    keep = [a for a in adds if any(a.location == c or a.location.startswith(c + ".") or c == "" for c in chosen)]
    if adds and not keep:
        report.notes.append(f"none of the {len(adds)} residual additions lies in {describe(where)}")
    return keep


def _get(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path) if path else model


def _stochastic_depth_hook(module: nn.Module, args, output):
    return module.stochastic_depth(output)


def _shakedrop_hook(module: nn.Module, args, output):
    return module.shakedrop(output)


def _attach(module: nn.Module, attr: str, helper: nn.Module, hook) -> str | None:
    """``helper`` as ``module.<attr>`` and ``hook`` as a forward hook of ``module``; why not, or None."""
    if attr in module._modules or hasattr(module, attr):
        return f"it already has {'a' if attr in module._modules else 'an attribute'} {attr!r}"
    module.add_module(attr, helper.train(module.training))      # the model's mode: an eval model stays in eval
    module.register_forward_hook(hook)
    return None


# ------------------------------------------------------------------------------------------------------ surgeries
def add_stochastic_depth(model: nn.Module, drop_rate: float, rule: str = "linear", mode: str = "row", *,
                         where: Selector | None = None, form: str = "inverted") -> SurgeryReport:
    """Stochastic depth on every residual branch of ``model``, in place (Huang et al. 2016, arXiv:1603.09382).

    The ``l``-th of the ``L`` residual additions found (:func:`find_residual_additions`, in execution order) has
    its branch dropped with probability ``p_l = drop_rate * l / L`` (``rule="linear"``, the paper's eq. 4 with
    ``p_L = drop_rate``) or ``p_l = drop_rate`` (``"uniform"``), per sample (``mode="row"``: a mask of shape
    (N, 1, ..., 1), timm's ``drop_path``) or for the whole batch (``"batch"``, the paper's):

        training:  y = x + b * f(x) / (1 - p_l),  b ~ Bernoulli(1 - p_l)      inference:  y = x + f(x)

    (``form="inverted"``, torchvision's :func:`~traintricks.nn.stochastic_depth`, as a
    :class:`~traintricks.nn.StochasticDepth` helper ``<branch>.stochastic_depth`` applied by a forward hook).
    ``form="paper"`` keeps the paper's eq. 5 instead -- ``x + b * f(x)`` in training, ``x + (1 - p_l) * f(x)`` at
    inference -- by turning the branch's last module into a :class:`~traintricks.nn.StochasticDepthBranch` (its
    class swapped; in ``"batch"`` mode a dropped module is not run).

    Args:
        model: any module; changed in place (module paths and ``state_dict`` keys unchanged).
        drop_rate: in ``[0, 1)``: the last branch's drop probability (``"linear"``) or every branch's.
        rule: ``"linear"`` or ``"uniform"``.
        mode: ``"row"`` (per sample; the branch output's dim 0 must be the batch) or ``"batch"``.
        where: keyword-only selector (:mod:`~traintricks.surgery.select`): only additions in the forward of the
            selected modules (``"layer4*"``); ``L`` counts those.
        form: keyword-only, ``"inverted"`` or ``"paper"``.

    Returns the :class:`SurgeryReport`: one change per branch (its path and ``p_l``), skipped branches with the
    reason (no module ends the branch, a module called twice, stochastic depth already there). Raises
    ``TypeError`` for a non-Module, ``ValueError`` for a bad rate, rule, mode or form,
    :class:`NothingToChangeError` when no branch could be given stochastic depth."""
    _check(model, "add_stochastic_depth")
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"add_stochastic_depth: drop_rate must be in [0, 1), got {drop_rate}")
    if mode not in ("row", "batch"):
        raise ValueError(f"add_stochastic_depth: mode must be 'row' or 'batch', got {mode!r}")
    if form not in ("inverted", "paper"):
        raise ValueError(f"add_stochastic_depth: form must be 'inverted' or 'paper', got {form!r}")
    _rates(1, drop_rate, rule, "add_stochastic_depth")            # checks the rule before anything changes
    report = SurgeryReport("add_stochastic_depth")
    adds = _residuals(model, report, where)
    for add, p in zip(adds, _rates(len(adds), drop_rate, rule, "add_stochastic_depth") if adds else []):
        if add.branch is None:
            report.skipped.append((add.location, add.why_not))
            continue
        module = _get(model, add.branch)
        if isinstance(module, StochasticDepthBranch) or isinstance(getattr(module, "stochastic_depth", None),
                                                                    StochasticDepth):
            report.skipped.append((add.branch, "the branch already has stochastic depth"))
            continue
        if form == "paper":
            _paper_depth(module, 1.0 - p, mode)
            report.changed.append((add.branch, f"stochastic depth (paper's form), survival {1.0 - p:.4g}, {mode}"))
            continue
        why = _attach(module, "stochastic_depth", StochasticDepth(p, mode), _stochastic_depth_hook)
        if why:
            report.skipped.append((add.branch, why))
        else:
            report.changed.append((add.branch, f"stochastic depth on its output, drop rate {p:.4g}, {mode}"))
    return report.require_changes(_LOOKED_FOR)


def add_shakedrop(model: nn.Module, p_last: float = 0.5, rule: str = "linear", alpha=(-1.0, 1.0),
                  beta=(0.0, 1.0), *, where: Selector | None = None) -> SurgeryReport:
    """ShakeDrop on every residual branch of ``model``, in place (Yamada et al. 2018, arXiv:1802.02375).

    The branch output ``f`` of the ``l``-th of ``L`` residual additions is scaled, per sample, by

        forward:  (b + alpha - b * alpha) * f,   backward: (b + beta - b * beta) * dL/dy,   inference: E[...] * f

    with ``b ~ Bernoulli(p_l)``, ``alpha ~ U(alpha)``, ``beta ~ U(beta)`` and the survival ``p_l = 1 - l / L * (1 -
    p_last)`` (``rule="linear"``, the paper's) or ``p_last`` (``"uniform"``); at inference the expectation
    ``p_l + (1 - p_l) * E[alpha]``. A :class:`~traintricks.nn.shake.ShakeDropScale` helper ``<branch>.shakedrop``
    applied by a forward hook on the branch's last module (keys unchanged).

    Args:
        p_last: survival probability of the last branch, in ``[0, 1]``.
        rule: ``"linear"`` or ``"uniform"``.
        alpha, beta: ``(low, high)`` ranges of the forward and backward coefficients.
        where: keyword-only selector restricting the additions (as :func:`add_stochastic_depth`).

    Returns the report; raises ``TypeError`` for a non-Module, ``ValueError`` for a bad ``p_last``, range or rule,
    :class:`NothingToChangeError` when no branch could be given ShakeDrop."""
    _check(model, "add_shakedrop")
    if not 0.0 <= p_last <= 1.0:
        raise ValueError(f"add_shakedrop: p_last must be in [0, 1], got {p_last}")
    alpha, beta = tuple(alpha), tuple(beta)
    ShakeDropScale(p_last, alpha, beta)                    # checks the ranges and the rule before anything changes
    _rates(1, 1.0 - p_last, rule, "add_shakedrop")
    report = SurgeryReport("add_shakedrop")
    adds = _residuals(model, report, where)
    drops = _rates(len(adds), 1.0 - p_last, rule, "add_shakedrop") if adds else []
    for add, d in zip(adds, drops):
        if add.branch is None:
            report.skipped.append((add.location, add.why_not))
            continue
        module = _get(model, add.branch)
        why = _attach(module, "shakedrop", ShakeDropScale(1.0 - d, alpha, beta), _shakedrop_hook)
        if why:
            report.skipped.append((add.branch, why))
        else:
            report.changed.append((add.branch, f"ShakeDrop on its output, survival {1.0 - d:.4g}"))
    return report.require_changes(_LOOKED_FOR)


def _zero(m: nn.Module, path: str, report: SurgeryReport) -> None:
    if _is_norm(m):
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor):
            report.skipped.append((path, "the branch's last norm has no affine weight"))
            return
        with torch.no_grad():
            w.zero_()
        report.changed.append((path, "norm weight (gamma) set to 0"))
    elif isinstance(m, _LAYERS):
        with torch.no_grad():
            m.weight.zero_()
            if m.bias is not None:
                m.bias.zero_()
        report.changed.append((path, f"{type(m).__name__} weight{' and bias' if m.bias is not None else ''} set "
                                     f"to 0 (no norm after it in the branch)"))
    else:
        report.skipped.append((path, f"the branch ends in a {type(m).__name__}, not a norm, convolution or linear "
                                     f"layer"))


def zero_init_residual(model: nn.Module, *, where: Selector | None = None) -> SurgeryReport:
    """Make every residual block start as the identity ("zero gamma": Goyal et al. 2017, arXiv:1706.02677), in
    place.

    In each residual branch (:func:`find_residual_additions`) the parameterized module nearest to the branch's end
    is zeroed: a norm's affine weight ``gamma`` (torchvision's ``zero_init_residual=True`` zeroes ``bn2``/``bn3``
    the same way), or -- when the branch ends in a convolution or linear layer with no norm after it (a
    pre-activation block, a ViT block's ``attn.proj``) -- that layer's weight and bias, so that ``f(x) = 0``
    and ``y = x`` at initialization (zeroing a norm followed by a ReLU would leave it without gradient; a zeroed
    last layer still learns). ``where`` (keyword-only) restricts the additions to the selected modules.

    Returns the report; raises ``TypeError`` for a non-Module, :class:`NothingToChangeError` when no branch has
    such a module."""
    _check(model, "zero_init_residual")
    report = SurgeryReport("zero_init_residual")
    done = set()
    for add in _residuals(model, report, where):
        if add.last_layer is None:
            report.skipped.append((add.location, "the branch has no parameterized module"))
        elif add.last_layer not in done:
            done.add(add.last_layer)
            _zero(_get(model, add.last_layer), add.last_layer, report)
    return report.require_changes(_LOOKED_FOR)


__all__ = ["ResidualAdd", "add_shakedrop", "add_stochastic_depth", "find_residual_additions", "zero_init_residual"]
