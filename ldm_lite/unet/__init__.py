"""The time-conditional UNet with cross-attention (paper Sec. 3.3, Eq. 3; App. E).

* :mod:`ldm_lite.unet.blocks` -- timestep embedding, ResBlock, Down/Upsample, GroupNorm32
* :mod:`ldm_lite.unet.attention` -- CrossAttention, SpatialTransformer, AttentionBlock
* :mod:`ldm_lite.unet.model` -- UNetModel, UNetConfig, PAPER_CONFIGS, count_parameters
"""

from ldm_lite.unet.attention import (
    AttentionBlock,
    BasicTransformerBlock,
    CrossAttention,
    FeedForward,
    GEGLU,
    SpatialTransformer,
    record_attention,
)
from ldm_lite.unet.blocks import (
    Downsample,
    GroupNorm32,
    ResBlock,
    TimestepBlock,
    TimestepEmbedSequential,
    Upsample,
    normalization,
    timestep_embedding,
    zero_module,
)
from ldm_lite.unet.model import (
    PAPER_CONFIGS,
    ShapeRow,
    UNetConfig,
    UNetModel,
    count_parameters,
    diffusers_equivalent,
)

__all__ = [
    "AttentionBlock", "BasicTransformerBlock", "CrossAttention", "FeedForward", "GEGLU", "SpatialTransformer",
    "record_attention", "Downsample", "GroupNorm32", "ResBlock", "TimestepBlock", "TimestepEmbedSequential",
    "Upsample", "normalization", "timestep_embedding", "zero_module", "PAPER_CONFIGS", "ShapeRow", "UNetConfig",
    "UNetModel", "count_parameters", "diffusers_equivalent",
]
