"""Depth: dropping whole residual branches, ``y = x + f(x)`` becoming ``y = x``.

Channel pruning thins every layer but keeps the network's depth, and on a CPU the layers'
fixed costs (a kernel launch, a pass over the activations) stay; a latency budget far below
the model's can only be met by running fewer layers. A residual network tolerates losing
single blocks (Veit et al., 2016: "Residual networks behave like ensembles of relatively
shallow networks"; Huang et al., 2016: stochastic depth), and a short finetune recovers
what is lost. This module finds the branches that can go, in any model ``torch.fx`` traces,
and removes them; it needs no knowledge of the architecture.

A *residual block* is an addition ``skip + branch`` whose ``branch`` is computed from
``skip`` alone (through layers with weights; ``nn.Identity`` shortcuts are looked through),
whose intermediate results nothing else reads, and whose output has ``skip``'s shape (no
broadcasting). Blocks with a projection shortcut (a strided convolution beside the branch)
change the shape or read the input through other layers, and are not blocks here: dropping
them would change the network's interface. A block is named after its layers' common dotted
prefix (``layer2.1`` in resnet20), so rules can match blocks as they match layers.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from autocompress.exceptions import ModelError

__all__ = ["ResidualBlock", "drop_blocks", "find_residual_blocks"]

_ADDS = {operator.add, operator.iadd, torch.add}


@dataclass(frozen=True)
class ResidualBlock:
    """A residual branch that can be dropped: its name (the common prefix of ``layers``),
    the traced addition that merges it, and the modules it runs."""

    name: str
    add: str
    layers: tuple[str, ...]


#: torch.nn's layers with weights: a model's own subclass of one (timm's ``GroupNorm1``,
#: ``LayerNorm2d``, ``BatchNormAct2d``, ``Conv2dSame``) is called as a module, not traced
#: through. Traced through, its weights became bare parameters read by a functional call,
#: which channel pruning does not shrink with the layers around them (PoolFormer with a
#: block dropped: a GroupNorm of 320 weights on 208 channels).
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.GroupNorm,
           nn.LayerNorm, nn.Embedding)


class _Tracer(fx.Tracer):
    """``torch.fx``'s tracer, with every subclass of :data:`_LAYERS` a leaf."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _LAYERS) or super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as exc:  # fx raises TraceError, TypeError, NotImplementedError, ...
        raise ModelError(
            f"depth rules need a model torch.fx can trace, and {type(model).__name__} cannot "
            f"be traced ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            "; remove the depth section from the search space for this model") from exc


def _operands(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """The two tensor operands of a plain addition (``a + b``, ``torch.add(a, b)``,
    ``a.add(b)``), else ``None``."""
    is_add = ((node.op == "call_function" and node.target in _ADDS)
              or (node.op == "call_method" and node.target in ("add", "add_")))
    if not is_add or len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    if isinstance(a, fx.Node) and isinstance(b, fx.Node):
        return a, b
    return None


def _source(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node:
    """``node`` seen through ``nn.Identity`` calls."""
    while (node.op == "call_module" and isinstance(modules.get(str(node.target)), nn.Identity)
           and len(node.all_input_nodes) == 1):
        node = node.all_input_nodes[0]
    return node


def _branch(skip: fx.Node, out: fx.Node) -> set[fx.Node] | None:
    """The nodes computing ``out`` from ``skip``, or ``None`` when ``out`` reads anything
    else (another input, an activation from elsewhere) or does not depend on ``skip``."""
    found: set[fx.Node] = set()
    stack, reached = [out], False
    while stack:
        node = stack.pop()
        if node is skip:
            reached = True
            continue
        if node in found or node.op == "get_attr":
            continue
        if node.op in ("placeholder", "output"):
            return None
        found.add(node)
        stack.extend(node.all_input_nodes)
    return found if reached else None


def _prefix(names: Iterable[str]) -> str:
    parts = [name.split(".") for name in names]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _weighted(modules: dict[str, nn.Module], layers: Iterable[str]) -> list[str]:
    """The ``layers`` that hold weights of their own."""
    return [name for name in layers
            if any(True for _ in modules[name].parameters(recurse=False))]


def _branches(traced: fx.GraphModule
              ) -> Iterator[tuple[fx.Node, fx.Node, fx.Node, tuple[str, ...]]]:
    """Every addition of ``traced`` that merges a branch computed from the other operand
    alone and read nowhere else: (the addition, the skip operand, the branch's output, the
    modules the branch runs); shapes are not checked here."""
    modules = dict(traced.named_modules())
    for node in traced.graph.nodes:
        operands = _operands(node)
        if operands is None:
            continue
        for skip, out in (operands, operands[::-1]):
            branch = _branch(_source(skip, modules), out)
            if branch is None or any(user is not node and user not in branch
                                     for n in branch for user in n.users):
                continue
            layers = tuple(str(n.target) for n in traced.graph.nodes
                           if n in branch and n.op == "call_module")
            if _weighted(modules, layers):
                yield node, skip, out, layers
                break


def _owner(node: fx.Node) -> str:
    """The module whose ``forward`` runs ``node`` (``""``: the model's own)."""
    stack = node.meta.get("nn_module_stack") or {}
    return str(next(reversed(stack.values()))[0]) if stack else ""


def _blocks(traced: fx.GraphModule, example_input: torch.Tensor
            ) -> list[tuple[ResidualBlock, str]]:
    """The residual blocks, each with the module whose ``forward`` adds it."""
    modules = dict(traced.named_modules())
    with torch.no_grad():
        ShapeProp(traced.eval()).propagate(example_input)
    found: list[tuple[ResidualBlock, str]] = []
    names: set[str] = set()
    for node, skip, out, layers in _branches(traced):
        shapes = [n.meta.get("tensor_meta") for n in (skip, out)]
        if None in shapes or shapes[0].shape != shapes[1].shape:
            continue
        name = _prefix(_weighted(modules, layers)) or node.name
        if name in names:
            name = f"{name}:{node.name}"
        names.add(name)
        found.append((ResidualBlock(name, node.name, layers), _owner(node)))
    return found


def find_residual_blocks(model: nn.Module, example_input: torch.Tensor
                         ) -> list[ResidualBlock]:
    """The residual blocks of ``model`` (see the module doc), in the order they run.

    Raises:
        ModelError: ``model`` cannot be traced by ``torch.fx``.
    """
    # a copy: tracing shares the model's layers, and running it in training mode would
    # update BatchNorm statistics
    return [block for block, _ in _blocks(_trace(copy.deepcopy(model)), example_input)]


def drop_blocks(model: nn.Module, names: Sequence[str], example_input: torch.Tensor
                ) -> nn.Module:
    """A copy of ``model`` (sharing no state with it) without the residual branches named in
    ``names``: each block's output is its input.

    Only the module whose ``forward`` adds a dropped branch (resnet's ``BasicBlock``,
    torchvision's ``InvertedResidual``) is replaced, by a ``torch.fx.GraphModule`` of itself
    without the branch; every other module stays as it was, so the exported graph keeps
    the layers' names (ONNX node scopes follow the module calls) and int8 and other
    per-layer rules still find them. A block nested in another block named here is dropped
    with it.

    Raises:
        ModelError: ``model`` cannot be traced, or ``names`` holds a name that is not one of
            its residual blocks.
    """
    training = model.training
    model = copy.deepcopy(model)
    found = {block.name: (block, owner) for block, owner in _blocks(_trace(model),
                                                                    example_input)}
    unknown = sorted(set(names) - set(found))
    if unknown:
        raise ModelError(f"{type(model).__name__} has no residual block(s) {unknown[:5]}; its "
                         f"blocks are {sorted(found)[:10]}")
    # a block inside another dropped block (a residual around a stage of residual blocks)
    # goes with it: its addition is no longer in the model once the outer branch is gone
    chosen = {name: set(found[name][0].layers) for name in names}
    by_owner: dict[str, list[ResidualBlock]] = {}
    for name in dict.fromkeys(names):
        if any(chosen[name] < layers for layers in chosen.values()):
            continue
        block, owner = found[name]
        by_owner.setdefault(owner, []).append(block)
    # the deepest owners first: an owner's trace then runs through what replaced the others
    for owner in sorted(by_owner, key=lambda o: -len(o.split("."))):
        replaced = _without(model.get_submodule(owner), owner, by_owner[owner])
        if not owner:
            model = replaced
        else:
            parent, _, attribute = owner.rpartition(".")
            setattr(model.get_submodule(parent), attribute, replaced)
    _out_of_place(model)
    return model.train(training)


def _without(module: nn.Module, owner: str, blocks: Sequence[ResidualBlock]
             ) -> fx.GraphModule:
    """``module`` (named ``owner`` in the model) traced, without the branches of
    ``blocks``."""
    traced = _trace(module)
    prefix = f"{owner}." if owner else ""
    # a block's layers as the whole model traced them may begin outside its owner: the
    # ``nn.Identity`` layers its skip was looked through (a stage's identity downsample)
    wanted = {tuple(layer for layer in block.layers if layer.startswith(prefix))
              for block in blocks}
    # which operand of each addition is its skip, found before anything is dropped: where
    # one module adds two branches in a row (a transformer block's attention, then its
    # MLP), the second addition's skip is the first addition, replaced once that is dropped
    chosen = [(node, node.args.index(skip)) for node, skip, _, layers in _branches(traced)
              if tuple(prefix + layer for layer in layers) in wanted]
    for node, operand in chosen:
        node.replace_all_uses_with(node.args[operand])
        traced.graph.erase_node(node)
    dropped = len(chosen)
    if dropped != len(blocks):   # not expected: the module traces as it did in the model
        raise ModelError(f"{owner or type(module).__name__}: found {dropped} of the "
                         f"{len(blocks)} residual branches to drop when tracing it alone")
    traced.graph.eliminate_dead_code()
    traced.delete_all_unused_submodules()
    _restore_children(traced, module)
    traced.recompile()
    return traced


def _leaves(module: nn.Module) -> set[str]:
    return {name for name, m in module.named_modules() if next(m.children(), None) is None}


def _restore_children(traced: fx.GraphModule, module: nn.Module) -> None:
    """Put ``module``'s own children back into ``traced`` where none of their layers went
    with a dropped branch. Tracing keeps only the layers the graph calls, under plain
    ``nn.Module`` stand-ins for their containers; the traced code reads the layers by the
    same paths, but what recognizes a container by its type (the local channel groups of an
    ``nn.Sequential``, the attention types that send a model to local groups) would no
    longer find it."""
    for name, child in module.named_children():
        stand_in = getattr(traced, name, None)
        if (isinstance(stand_in, nn.Module) and stand_in is not child
                and _leaves(stand_in) == _leaves(child)):
            setattr(traced, name, child)


def _out_of_place(model: nn.Module) -> None:
    """Make in-place activations write new tensors. What followed a dropped addition (the
    ReLU after resnet's ``out + x``, or the next block) now reads the previous block's
    output, which that block's own activation may have saved for its gradient: changing it
    in place would break the backward pass."""
    for module in model.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False  # type: ignore[assignment]
        if isinstance(module, fx.GraphModule):
            changed = [node for node in module.graph.nodes
                       if node.kwargs.get("inplace") is True]
            for node in changed:
                node.kwargs = {**node.kwargs, "inplace": False}
            if changed:
                module.recompile()
