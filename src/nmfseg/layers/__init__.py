"""Small reusable layers: channel LayerNorm, pointwise conv, MLP, dropout, position embedding,
and the fused CPU kernels the blocks use."""

from nmfseg.layers.dropout import Dropout
from nmfseg.layers.fused import fusable, fused_kernels
from nmfseg.layers.mlp import MLP, norm_mlp_residual
from nmfseg.layers.norm import LayerNorm, layer_norm_pointwise
from nmfseg.layers.pointwise import PointwiseConv, is_channels_last
from nmfseg.layers.pos_embed import PositionEmbedding

__all__ = [
    "MLP",
    "Dropout",
    "LayerNorm",
    "PointwiseConv",
    "PositionEmbedding",
    "fusable",
    "fused_kernels",
    "is_channels_last",
    "layer_norm_pointwise",
    "norm_mlp_residual",
]
