"""Layers of the Factorizer networks: channel LayerNorm, pointwise conv, MLP, position
embedding and the Wrapped NMF subblock."""

from nmfseg.layers.dropout import Dropout
from nmfseg.layers.mlp import MLP
from nmfseg.layers.norm import LayerNorm, layer_norm_pointwise, unfused
from nmfseg.layers.pointwise import PointwiseConv, is_channels_last
from nmfseg.layers.pos_embed import PositionEmbedding
from nmfseg.layers.wrapped_nmf import MATRICIZE_KINDS, NMFRecord, WrappedNMF, factor_maps

__all__ = [
    "MATRICIZE_KINDS",
    "MLP",
    "Dropout",
    "LayerNorm",
    "NMFRecord",
    "PointwiseConv",
    "PositionEmbedding",
    "WrappedNMF",
    "factor_maps",
    "is_channels_last",
    "layer_norm_pointwise",
    "unfused",
]
