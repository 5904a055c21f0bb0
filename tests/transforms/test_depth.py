"""Dropping residual branches: which additions are blocks, what dropping one does to the
network, and how the other transforms follow (on resnet20 and small models built here)."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch
from torch import nn

from autocompress.exceptions import ModelError, SearchSpaceError
from autocompress.hardware.export import export_onnx
from autocompress.models.cifar_resnet import resnet20
from autocompress.space import Candidate
from autocompress.transforms import (
    compress,
    drop_blocks,
    find_channel_groups,
    find_residual_blocks,
)

X = torch.zeros(1, 3, 32, 32)
IDENTITY_BLOCKS = ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1",
                   "layer3.2"]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return resnet20(num_classes=10).eval()


def _convs(module: nn.Module) -> int:
    graph = onnx.load_from_string(export_onnx(module, X)).graph
    return sum(node.op_type == "Conv" for node in graph.node)


def test_resnet20_has_a_block_per_identity_shortcut(model) -> None:
    blocks = find_residual_blocks(model, X)
    # the first block of stages 2 and 3 changes the shape through a projection: not a block
    assert [b.name for b in blocks] == IDENTITY_BLOCKS
    assert blocks[3].layers == ("layer2.1.conv1", "layer2.1.bn1", "layer2.1.relu",
                                "layer2.1.conv2", "layer2.1.bn2")


def test_a_dropped_block_passes_its_input_through(model) -> None:
    dropped = drop_blocks(model, ["layer3.2"], X)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.layer3[1](model.layer3[0](model.layer2(model.layer1(
            model.relu(model.bn1(model.conv1(x)))))))
        expected = model.fc(torch.flatten(model.avgpool(features), 1))
        assert torch.allclose(dropped(x), expected, atol=1e-5)
        assert not torch.allclose(model(x), expected, atol=1e-3)   # the block did something
    names = {name for name, _ in dropped.named_modules()}
    assert "layer3.1.conv1" in names and "layer3.2.conv1" not in names
    assert _convs(dropped) == _convs(model) - 2
    # the model itself is left whole
    assert "layer3.2.conv1" in {name for name, _ in model.named_modules()}


def test_dropping_an_unknown_block_names_the_blocks_there_are(model) -> None:
    with pytest.raises(ModelError, match="layer2.1"):
        drop_blocks(model, ["layer2.0"], X)


class _ReadElsewhere(nn.Module):
    """``x + f(x)`` where ``f(x)`` is also read by the head: dropping it would change more
    than the addition."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.f(x)
        return (x + branch).mean() + branch.mean()


class _Broadcast(nn.Module):
    """``x + f(x)`` where ``f`` pools to one value per channel: a broadcast, not a block."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(3, 3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


class _TwoInputs(nn.Module):
    """The branch reads the network's input besides the skip: not computed from it alone."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 1)
        self.f = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return h + self.f(h * x)


class _Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x) + x


@pytest.mark.parametrize("module", [_ReadElsewhere(), _Broadcast(), _TwoInputs()],
                         ids=["read-elsewhere", "broadcast", "two-inputs"])
def test_additions_that_are_not_blocks(module: nn.Module) -> None:
    assert find_residual_blocks(module, X) == []


def test_a_block_outside_any_submodule_is_named_after_its_layer() -> None:
    (block,) = find_residual_blocks(_Plain(), X)
    assert block.name == "f" and block.layers == ("f",)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(drop_blocks(_Plain(), ["f"], X)(x), x)


class _Untraceable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:          # data-dependent control flow: torch.fx cannot trace it
            return x
        return -x


def test_an_untraceable_model_gets_a_clear_error() -> None:
    with pytest.raises(ModelError, match=r"torch\.fx.*remove the depth section"):
        find_residual_blocks(_Untraceable(), X)


def test_a_candidate_drops_blocks_before_pruning_channels(model) -> None:
    candidate = Candidate(depth={"layer1.1": 0.0, "layer3.2": 0.0, "layer3.1": 1.0},
                          channel_keep={"conv1": 0.5, "layer1.1.conv1": 0.5,
                                        "layer2.1.conv1": 0.5},
                          sparsity={"layer3.2.conv2": 0.5}, round_to=8)
    assert candidate.combines == "depth+channels+sparsity"
    assert candidate.dropped_blocks == ("layer1.1", "layer3.2")
    compressed = compress(model, candidate, X)
    # groups and layers inside a dropped block are gone from the plan; the others are pruned
    assert compressed.candidate.channel_keep == {"conv1": 0.5, "layer2.1.conv1": 0.5}
    assert compressed.candidate.sparsity == {}
    assert compressed.channels["layer2.1.conv1"] == (32, 16)
    assert "layer1.1.conv1" not in compressed.channels
    assert _convs(compressed.module) == _convs(model) - 4
    assert Candidate.from_json(candidate.to_json()) == candidate


def test_depth_values_are_kept_or_dropped() -> None:
    with pytest.raises(SearchSpaceError, match="1 .block kept. or 0"):
        Candidate(depth={"layer1.1": 0.5})
    # a candidate without depth keeps its JSON (and hash) as before depth existed
    assert "depth" not in Candidate(channel_keep={"conv1": 0.5}).to_dict()
    assert Candidate(depth={"layer1.1": 1.0}).is_identity
    assert not Candidate(depth={"layer1.1": 0.0}).is_identity


def test_a_network_with_dropped_blocks_trains(model) -> None:
    # the ReLU after a dropped addition reads the previous block's output: in place, it
    # would overwrite what that block's ReLU saved for the backward pass
    dropped = drop_blocks(model, ["layer1.1", "layer1.2"], X).train()
    dropped(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.relu.inplace   # the model's own layers are untouched


def test_the_exported_graph_keeps_every_remaining_layer_name(model) -> None:
    """Only the module that adds a dropped branch is replaced: ONNX node scopes still name
    every layer, so int8 (and any per-layer rule) finds them."""
    from autocompress.transforms import onnx_layer_nodes, sparsifiable_layers

    dropped = drop_blocks(model, ["layer1.1", "layer3.2"], X)
    assert type(dropped) is type(model)
    graph = onnx.load_from_string(export_onnx(dropped, X))
    assert set(onnx_layer_nodes(graph)) == set(sparsifiable_layers(dropped))
    assert "layer1.2.conv1" in onnx_layer_nodes(graph)


def test_finding_blocks_leaves_the_model_as_it_was(model) -> None:
    trained = copy.deepcopy(model).train()
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    find_residual_blocks(trained, torch.randn(2, 3, 32, 32))
    assert trained.training
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.bn(self.conv(x)))


class _Stage(nn.Module):
    """A residual around a stage of residual blocks."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(_Block(c), _Block(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.blocks(x)


class _Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.stage, self.head = nn.Conv2d(3, 8, 3, padding=1), _Stage(8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(self.stem(x)).mean((2, 3)))


def test_a_block_nested_in_a_dropped_block_goes_with_it() -> None:
    torch.manual_seed(0)
    nested, x = _Nested().eval(), torch.randn(2, 3, 8, 8)
    small = torch.zeros(1, 3, 8, 8)
    assert [b.name for b in find_residual_blocks(nested, small)] == [
        "stage.blocks.0", "stage.blocks.1", "stage.blocks"]
    outer = drop_blocks(nested, ["stage.blocks"], small)
    with torch.no_grad():
        assert torch.allclose(outer(x), nested.head(nested.stem(x).mean((2, 3))), atol=1e-6)
        for names in (["stage.blocks", "stage.blocks.0"], ["stage.blocks.1", "stage.blocks"]):
            both = drop_blocks(nested, names, small)
            assert torch.allclose(both(x), outer(x), atol=1e-6)
    # inner blocks alone still drop one at a time
    inner = drop_blocks(nested, ["stage.blocks.0"], small)
    assert {n for n, _ in inner.named_modules()} >= {"stage.blocks.1.conv"}
    assert "stage.blocks.0.conv" not in {n for n, _ in inner.named_modules()}
    # and through a candidate, with channels named inside the dropped stage ignored
    plan = Candidate(depth={"stage.blocks": 0.0, "stage.blocks.0": 0.0},
                     channel_keep={"stage.blocks.1.conv": 0.5, "stem": 0.5})
    compressed = compress(nested, plan, small, num_classes=4)
    assert not any(n.startswith("stage.blocks") for n, _ in compressed.module.named_modules())


class _TwoBranches(nn.Module):
    """Two residual branches added in one ``forward``, as in a transformer block (attention,
    then MLP): the second addition's skip is the first addition."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.attn = nn.Conv2d(c, c, 1)
        self.mlp = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.ReLU(), nn.Conv2d(2 * c, c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(torch.relu(x))


class _Transformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.blocks = nn.Sequential(_TwoBranches(8), _TwoBranches(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean((2, 3))


@pytest.mark.parametrize("names", [["blocks.0.attn"], ["blocks.0.mlp"],
                                   ["blocks.0.attn", "blocks.0.mlp"],
                                   ["blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"]])
def test_branches_added_in_a_row_in_one_module_drop_in_any_combination(names) -> None:
    torch.manual_seed(0)
    model, x = _Transformer().eval(), torch.randn(2, 3, 4, 4)
    small = torch.zeros(1, 3, 4, 4)
    assert [b.name for b in find_residual_blocks(model, small)] == [
        "blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"]
    h = model.stem(x)
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            if f"blocks.{i}.attn" not in names:
                h = h + block.attn(h)
            if f"blocks.{i}.mlp" not in names:
                h = h + block.mlp(torch.relu(h))
        dropped = drop_blocks(model, names, small)
        assert torch.allclose(dropped(x), h.mean((2, 3)), atol=1e-6)
    # a kept MLP is still the nn.Sequential it was (local channel groups are found in
    # sequences), not tracing's plain stand-in
    for i, block in enumerate(dropped.blocks):
        if f"blocks.{i}.mlp" not in names:
            assert type(block.mlp) is nn.Sequential


class _GroupNorm1(nn.GroupNorm):
    """timm's ``GroupNorm1``: a GroupNorm over all channels, with a forward of its own."""

    def __init__(self, channels: int) -> None:
        super().__init__(1, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.group_norm(x, 1, self.weight, self.bias, self.eps)


class _PoolFormerBlock(nn.Module):
    """Two branches added in a row, each behind a norm that is a direct child of the block."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm1 = _GroupNorm1(c)
        self.token = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm2 = _GroupNorm1(c)
        self.mlp = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.GELU(), nn.Conv2d(2 * c, c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _MetaFormer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.downsample = nn.Identity()       # a stage without one, as the first of timm's
        self.blocks = nn.Sequential(_PoolFormerBlock(16), _PoolFormerBlock(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.downsample(self.stem(x))).mean((2, 3)))


@pytest.mark.parametrize("first", [True, False])
def test_a_block_beside_a_norm_subclass_drops_and_prunes(first: bool) -> None:
    """Traced through, the kept branch's norm became a functional call on bare parameters,
    which channel pruning left at their width (PoolFormer: "weight of shape [320] and input
    of shape [1, 208, 4, 4]"); and the first block's skip, looked through the stage's
    identity downsample, named a layer outside the block ("found 0 of the 1 residual
    branches to drop when tracing it alone")."""
    torch.manual_seed(0)
    model, x = _MetaFormer().eval(), torch.randn(2, 3, 8, 8)
    blocks = [b.name for b in find_residual_blocks(model, x)]
    assert len(blocks) == 4
    stream = next(g.name for g in find_channel_groups(model, x) if "stem" in g.members)
    drop = blocks[0] if first else blocks[1]
    compressed = compress(model, Candidate(depth={drop: 0.0}, channel_keep={stream: 0.5}), x)
    assert compressed.channels[stream] == (16, 8)
    kept = compressed.module.blocks[0].norm2 if first else compressed.module.blocks[0].norm1
    assert type(kept) is _GroupNorm1
    with torch.no_grad():
        assert compressed.module(x).shape == (2, 10)


def test_a_group_named_by_a_layer_that_is_no_longer_its_root_takes_the_ratio() -> None:
    """Dropping a block couples the channels around it anew, and a group can take another
    root (timm's EdgeNeXt): a candidate naming the old root still prunes that group."""
    torch.manual_seed(0)
    model, x = _MetaFormer().eval(), torch.randn(2, 3, 8, 8)
    stream = next(g for g in find_channel_groups(model, x) if "stem" in g.members)
    assert stream.name != "stem"
    compressed = compress(model, Candidate(channel_keep={"stem": 0.5}), x)
    assert compressed.channels[stream.name] == (16, 8)
    assert compressed.module.stem.out_channels == 8
    with pytest.raises(SearchSpaceError, match="does not have: \\['fc'\\]"):
        compress(model, Candidate(channel_keep={"fc": 0.5}), x)   # its outputs: no group
