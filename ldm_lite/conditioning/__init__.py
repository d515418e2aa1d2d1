"""Conditioning encoders tau_theta (Sec. 3.3): class, text (from scratch and frozen), layout
and spatial maps (concatenated with z_t).

See :mod:`ldm_lite.conditioning.embedders` for the table of encoders and their null conditions.
"""

from ldm_lite.conditioning.condition import Condition
from ldm_lite.conditioning.embedders import (
    LAYOUT_FIELDS,
    ClassEmbedder,
    FrozenTextEncoder,
    LayoutEmbedder,
    TextTransformer,
    TransformerEmbedder,
    build_cond_stage,
    fourier_features,
    layout_from_objects,
)
from ldm_lite.conditioning.spatial import InpaintConcat, OneHot, SemanticEncoder, SpatialRescaler
from ldm_lite.conditioning.tokenizer import UnknownWordsWarning, WordPieceTokenizer, minilm_dir, unknown_words
from ldm_lite.conditioning.xtransformer import XTransformerEmbedder

__all__ = ["Condition", "ClassEmbedder", "TransformerEmbedder", "FrozenTextEncoder", "LayoutEmbedder", "TextTransformer",
           "WordPieceTokenizer", "UnknownWordsWarning", "unknown_words", "minilm_dir", "build_cond_stage",
           "fourier_features", "LAYOUT_FIELDS",
           "layout_from_objects", "SpatialRescaler", "OneHot", "InpaintConcat", "SemanticEncoder", "XTransformerEmbedder"]
