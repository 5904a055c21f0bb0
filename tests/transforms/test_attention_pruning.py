"""Channel pruning through attention: nn.MultiheadAttention loses the same positions in every
head, and a pruned torchvision VisionTransformer still runs."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from autocompress.space import Candidate
from autocompress.transforms import compress, find_channel_groups

EMBED, HEADS = 32, 4


class _AttentionNet(nn.Module):
    """Patches -> one attention and MLP block with residuals -> mean -> classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, EMBED, 4, stride=4)
        self.attn = nn.MultiheadAttention(EMBED, HEADS, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(EMBED, 2 * EMBED), nn.Linear(2 * EMBED, EMBED)
        self.head = nn.Linear(EMBED, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.stem(x).flatten(2).transpose(1, 2)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        t = t + self.fc2(torch.relu(self.fc1(t)))
        return self.head(t.mean(1))


def test_multihead_attention_keeps_its_heads_and_prunes_each_alike() -> None:
    torch.manual_seed(0)
    model = _AttentionNet().eval()
    with torch.no_grad():   # the embedding's weakest half: all of heads 0 and 1
        model.stem.weight.mul_(torch.arange(1.0, EMBED + 1).pow(2).view(-1, 1, 1, 1))
    x = torch.randn(1, 3, 16, 16)
    groups = {g.name: g for g in find_channel_groups(model, x)}
    residual = next(g for g in groups.values() if "attn" in g.members)
    assert residual.channels == EMBED and residual.blocks == HEADS
    pruned = compress(model, Candidate(channel_keep={n: 0.5 for n in groups}, round_to=4),
                      x).module
    attn = pruned.attn
    assert (attn.embed_dim, attn.num_heads, attn.head_dim) == (EMBED // 2, HEADS, 4)
    # the embedding channels kept, found by their stem filters
    old, new = model.stem.weight.flatten(1), pruned.stem.weight.flatten(1)
    kept = [int((old - row).abs().sum(1).argmin()) for row in new]
    head_dim = EMBED // HEADS
    assert [k // head_dim for k in kept] == [h for h in range(HEADS) for _ in range(4)]
    rows = model.attn.in_proj_weight[:EMBED][kept][:, kept]   # the queries of those channels
    torch.testing.assert_close(attn.in_proj_weight[:EMBED // 2], rows)
    assert pruned(x).shape == (1, 10)


def test_a_pruned_vision_transformer_runs() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2,
                              hidden_dim=32, mlp_dim=64, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    groups = find_channel_groups(model, x)
    pruned = compress(model, Candidate(channel_keep={g.name: 0.5 for g in groups},
                                       round_to=8), x).module
    assert pruned.hidden_dim == 16 and pruned.encoder.layers[0].mlp[0].out_features == 32
    assert pruned(x).shape == (1, 10)
