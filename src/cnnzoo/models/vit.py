"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

An image is cut into non-overlapping P x P patches, each linearly embedded (a P x P, stride-P
convolution), a learnt class token is put in front, learnt position embeddings are added, and a
stack of pre-norm Transformer encoder blocks (multi-head self-attention, then a GELU MLP, each
with a residual connection) mixes the tokens; the class token's final state, layer-normalised,
goes to a linear head. Module names and state-dict keys are torchvision's (``conv_proj``,
``class_token``, ``encoder.pos_embedding``, ``encoder.layers.encoder_layer_N``, ``heads.head``),
so its checkpoints load strictly, including the older ``mlp.linear_1``/``mlp.linear_2`` keys it
still accepts.

The position embeddings fix the number of patches, so a model is built for one ``image_size``;
weights made at another size are resized to it on loading (bicubic interpolation of the patch
grid's embeddings, as torchvision's ``interpolate_embeddings``).

``vit_cifar_4`` is a ViT for 28-32 px images with 4 px patches and about as many parameters as
ResNet-20, in the spirit of the small-data ViTs (Hassani et al. 2021, "Escaping the Big Data
Paradigm with Compact Transformers"; Lee et al. 2021, "Vision Transformer for Small-Size
Datasets").
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.models.base import ZooModel
from cnnzoo.models.features import FeatureInfo
from cnnzoo.registry import Paper, register_model

if TYPE_CHECKING:
    from cnnzoo.weights import LoadReport

__all__ = [
    "EncoderBlock",
    "MLPBlock",
    "VisionTransformer",
    "resize_position_embedding",
]

VIT_PAPER = Paper(
    "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale", 2021, "2010.11929"
)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

# Dosovitskiy et al., Table 1: patch side, layers, heads, hidden width D, MLP width.
VIT_CONFIGS: dict[str, tuple[int, int, int, int, int]] = {
    "b_16": (16, 12, 12, 768, 3072),
    "b_32": (32, 12, 12, 768, 3072),
    "l_16": (16, 24, 16, 1024, 4096),
    "l_32": (32, 24, 16, 1024, 4096),
    "h_14": (14, 32, 16, 1280, 5120),
}

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class MLPBlock(nn.Sequential):
    """Linear (D -> mlp) - GELU - dropout - linear (mlp -> D) - dropout.

    Indexed as torchvision's ``MLP`` (keys ``0.*`` and ``3.*``); state-dicts saved before its
    version 2 name the two layers ``linear_1`` and ``linear_2`` and are renamed on loading.
    """

    _version = 2

    def __init__(self, dim: int, mlp_dim: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, dim),
            nn.Dropout(dropout),
        )
        for layer in (self[0], self[3]):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=1e-6)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        *args: Any,
    ) -> None:
        version = local_metadata.get("version")
        if version is None or version < 2:
            rename_legacy_mlp_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


LEGACY_MLP_KEYS = {"linear_1": "0", "linear_2": "3"}


def rename_legacy_mlp_keys(state: dict[str, Any], prefix: str = "") -> list[str]:
    """Rename the keys ``PREFIX…linear_1.*``/``…linear_2.*`` (in place) to ``…0.*``/``…3.*``;
    the new keys."""
    renamed = []
    for key in [k for k in state if k.startswith(prefix)]:
        parts = key[len(prefix) :].split(".")
        if len(parts) >= 2 and parts[-2] in LEGACY_MLP_KEYS:
            parts[-2] = LEGACY_MLP_KEYS[parts[-2]]
            new = prefix + ".".join(parts)
            state[new] = state.pop(key)
            renamed.append(new)
    return renamed


class EncoderBlock(nn.Module):
    """Pre-norm Transformer encoder block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(
        self, num_heads: int, dim: int, mlp_dim: int, dropout: float, attention_dropout: float
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.ln_1 = LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(
            dim, num_heads, dropout=attention_dropout, batch_first=True
        )
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        # [0]: the attention output; its weights are not computed (need_weights=False).
        y = self.self_attention(y, y, y, need_weights=False)[0]
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    """Position embeddings, dropout, the encoder blocks and a final layer norm."""

    def __init__(
        self,
        seq_length: int,
        num_layers: int,
        num_heads: int,
        dim: int,
        mlp_dim: int,
        dropout: float,
        attention_dropout: float,
    ) -> None:
        super().__init__()
        # BERT's initialisation, as in the paper's code.
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential(
            OrderedDict(
                (
                    f"encoder_layer_{i}",
                    EncoderBlock(num_heads, dim, mlp_dim, dropout, attention_dropout),
                )
                for i in range(num_layers)
            )
        )
        self.ln = LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


def resize_position_embedding(
    embedding: torch.Tensor, grid: int, prefix: int = 1, mode: str = "bicubic"
) -> torch.Tensor:
    """Position embeddings ``(1, prefix + g*g, D)`` for a ``grid`` x ``grid`` patch grid.

    The class token's embeddings stay as they are; the patch embeddings are read as a g x g map
    and interpolated (bicubic, corners aligned: torchvision's ``interpolate_embeddings``).
    """
    tokens, patches = embedding[:, :prefix], embedding[:, prefix:]
    old = math.isqrt(patches.shape[1])
    if old * old != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} position embeddings do not form a square grid")
    if old == grid:
        return embedding
    dim = patches.shape[-1]
    as_map = patches.transpose(1, 2).reshape(1, dim, old, old)
    resized = F.interpolate(as_map.float(), size=grid, mode=mode, align_corners=True)
    resized = resized.to(embedding.dtype).reshape(1, dim, grid * grid).transpose(1, 2)
    return torch.cat([tokens, resized], dim=1)


class VisionTransformer(ZooModel):
    """ViT: patch embedding, class token, position embeddings, encoder, linear head."""

    first_conv = "conv_proj"
    classifier_name = "heads.head"
    # Tokens in front of the patch tokens (timm's name): the class token. Feature maps and
    # explanations read the patch tokens as a map (see cnnzoo.models.features.tokens_to_map).
    num_prefix_tokens = 1
    # The trainer builds it for the data's side (a multiple of the patch) instead of resizing.
    supports_image_size = True

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        representation_size: int | None = None,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            below = patch_size * (image_size // patch_size)
            options = f"{below} or {below + patch_size}" if below else str(patch_size)
            raise ValueError(
                f"image_size {image_size} is not a multiple of the {patch_size}-px patches; "
                f"use {options}"
            )
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} does not split into {num_heads} heads")
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.num_classes = num_classes
        self.representation_size = representation_size
        self.min_input_size = self.fixed_input_size = image_size
        self.grid_size = image_size // patch_size

        self.conv_proj = nn.Conv2d(in_chans, hidden_dim, kernel_size=patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.seq_length = self.grid_size**2 + self.num_prefix_tokens
        self.encoder = Encoder(
            self.seq_length, num_layers, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout
        )
        heads: OrderedDict[str, nn.Module] = OrderedDict()
        if representation_size is not None:  # the paper's pre-training head
            heads["pre_logits"] = nn.Linear(hidden_dim, representation_size)
            heads["act"] = nn.Tanh()
        self.num_features = representation_size or hidden_dim
        heads["head"] = nn.Linear(self.num_features, num_classes)
        self.heads = nn.Sequential(heads)
        # Stages: the patch tokens after each block, read as maps at 1/patch of the input; the
        # deepest is the final layer norm's output, what the head reads (the class token there).
        stages = [f"encoder.layers.encoder_layer_{i}" for i in range(num_layers - 1)]
        self.feature_info = FeatureInfo(
            (name, hidden_dim, patch_size) for name in [*stages, "encoder.ln"]
        )
        # Grad-CAM's default layer: the input of the last attention. The patch tokens the last
        # block outputs never reach the class token (only the per-token norm follows), so their
        # gradient, and Grad-CAM there, is zero.
        self.explain_layer = f"encoder.layers.encoder_layer_{num_layers - 1}.ln_1"
        self._init_weights()

    def _init_weights(self) -> None:
        fan_in = self.conv_proj.in_channels * self.patch_size**2
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)
        if "pre_logits" in self.heads._modules:
            pre_logits = self.heads.pre_logits
            nn.init.trunc_normal_(pre_logits.weight, std=math.sqrt(1 / pre_logits.in_features))
            nn.init.zeros_(pre_logits.bias)
        # A zero head: every class starts equally likely (the paper's fine-tuning recipe).
        nn.init.zeros_(self.heads.head.weight)
        nn.init.zeros_(self.heads.head.bias)

    def rebuild_hint(self, height: int, width: int) -> str:
        if height == width and height % self.patch_size == 0:
            return f" or build it with image_size={height}"
        return ""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, 1 + (H/P)·(W/P), D) tokens, the class token first."""
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.encoder(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0]
        return self.heads[:-1](x) if pre_logits else self.heads(x)

    def adapt_state_dict(
        self, state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], report: LoadReport
    ) -> None:
        """Make a ViT state-dict fit this model, in place (called by cnnzoo.load_weights):
        legacy MLP keys renamed, position embeddings resized to this model's patch grid."""
        if rename_legacy_mlp_keys(state):
            report.adapted["encoder.layers.*.mlp"] = "renamed linear_1/linear_2 to 0/3"
        key = "encoder.pos_embedding"
        if key in state and key in target and state[key].shape != target[key].shape:
            old = state[key]
            if old.dim() == 3 and old.shape[0] == 1 and old.shape[2] == target[key].shape[2]:
                state[key] = resize_position_embedding(old, self.grid_size, self.num_prefix_tokens)
                before = math.isqrt(old.shape[1] - self.num_prefix_tokens)
                report.adapted[key] = (
                    f"interpolated the {before}x{before} patch grid's position embeddings to "
                    f"{self.grid_size}x{self.grid_size} (bicubic) for {self.image_size}-px inputs"
                )


def _vit(
    variant: str, num_classes: int, in_chans: int, image_size: int = 224, **kwargs: Any
) -> VisionTransformer:
    patch, layers, heads, dim, mlp = VIT_CONFIGS[variant]
    return VisionTransformer(
        image_size, patch, layers, heads, dim, mlp,
        num_classes=num_classes, in_chans=in_chans, **kwargs,
    )  # fmt: skip


_IMAGENET = {"family": "vit", "paper": VIT_PAPER, "torchvision": True}


@register_model(**_IMAGENET, imagenet_top1=81.072)
def vit_b_16(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VisionTransformer:
    """ViT-B/16 (Dosovitskiy et al. 2021, Table 1): 12 layers, width 768, 12 heads."""
    return _vit("b_16", num_classes, in_chans, **kwargs)


@register_model(**_IMAGENET, imagenet_top1=75.912)
def vit_b_32(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VisionTransformer:
    """ViT-B/32: ViT-B with 32-px patches (49 tokens at 224 px)."""
    return _vit("b_32", num_classes, in_chans, **kwargs)


@register_model(**_IMAGENET, imagenet_top1=79.662)
def vit_l_16(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VisionTransformer:
    """ViT-L/16 (Table 1): 24 layers, width 1024, 16 heads."""
    return _vit("l_16", num_classes, in_chans, **kwargs)


@register_model(**_IMAGENET, imagenet_top1=76.972)
def vit_l_32(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VisionTransformer:
    """ViT-L/32: ViT-L with 32-px patches."""
    return _vit("l_32", num_classes, in_chans, **kwargs)


# torchvision's only weights for ViT-H/14 are SWAG's; its DEFAULT is the end-to-end fine-tuned
# set at 518 px, whose top-1 is quoted. The architecture defaults to 224 px, as torchvision's.
@register_model(**_IMAGENET, imagenet_top1=88.552)
def vit_h_14(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> VisionTransformer:
    """ViT-H/14 (Table 1): 32 layers, width 1280, 16 heads, 14-px patches."""
    return _vit("h_14", num_classes, in_chans, **kwargs)


# The small-data ViT: 4-px patches, width 64, 8 blocks of 4 heads, MLP ratio 2.
VIT_CIFAR = dict(patch_size=4, num_layers=8, num_heads=4, hidden_dim=64, mlp_dim=128)


@register_model(
    family="vit",
    paper=VIT_PAPER,
    input_size=32,
    mean=CIFAR_MEAN,
    std=CIFAR_STD,
    num_classes=10,
)
def vit_cifar_4(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> VisionTransformer:
    """A ViT for 28-32 px images: 4-px patches (64 tokens at 32 px, 49 at 28), 8 blocks of
    width 64 with 4 heads and an MLP of 128, about ResNet-20's parameter count."""
    options = {**VIT_CIFAR, "image_size": 32, **kwargs}
    return VisionTransformer(num_classes=num_classes, in_chans=in_chans, **options)
