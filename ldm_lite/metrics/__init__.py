"""Measurement for the course (chapter 08), split by purpose:

=====================  ==========================================================================
``reconstruction``     PSNR, SSIM (chapter 01's autoencoders), L1 inside an inpainting hole (07)
``features``           the embeddings: Inception-v3 when its weights are present, labelled substitutes
``evaluators``         the course's own feature networks, trained on its offline data and shipped
``distances``          features -> numbers: FID (Fréchet distance), KID, precision / recall,
                       streaming statistics, bootstrap intervals (paired or not), paired differences
``quality``            front doors: images in, numbers out with n, interval, floor and ceiling;
                       paired anchors for reconstruction scores
``conditional``        did the sample show what the condition asked for? caption / layout / class accuracy
=====================  ==========================================================================

Every name is importable from ``ldm_lite.metrics`` directly.
"""

from ldm_lite.metrics.reconstruction import masked_l1, psnr, ssim
from ldm_lite.metrics.features import (
    FEATURE_KINDS, FID_INCEPTION_FILE, FID_INCEPTION_URL, INCEPTION_DIM, INCEPTION_SIZE,
    RANDOM_VGG_FEATURE_DIM, RANDOM_VGG_FEATURE_LAYERS, RANDOM_VGG_FEATURE_SIZE, TORCHVISION_INCEPTION_FILE,
    _ANNOUNCED, ClassifierFeatureExtractor, FeatureExtractor, FeatureSubstituteWarning,
    InceptionFeatureExtractor, RandomVGGFeatureExtractor, _tf_pool_block, compute_features,
    get_feature_extractor, hub_checkpoints_dir, inception_weights_available, inception_weights_paths,
)
from ldm_lite.metrics.distances import (
    feature_statistics, fid_from_features, frechet_distance, kid_from_features, precision_recall,
)
from ldm_lite.metrics.quality import fid, format_metric, kid, sample_quality
from ldm_lite.metrics.distances import (
    StreamingFeatureStats, bonferroni_level, bootstrap_interval, paired_difference, set_metrics_with_intervals,
    wilson_interval,
)
from ldm_lite.metrics.features import DOMAIN_KINDS, domain_feature_extractor
from ldm_lite.metrics.quality import feature_distance, features_of, format_report, quality_report, stream_features
from ldm_lite.metrics.quality import RECONSTRUCTION_DEGRADATIONS, degrade_images, reconstruction_anchors
from ldm_lite.metrics.evaluators import (
    EmojiFeatureNet, FashionClassifier, ShapesAttributeNet, build_evaluator, load_evaluator,
)
from ldm_lite.metrics.conditional import (
    RELATIONS, box_centre, box_iou, caption_accuracy, caption_relation_accuracy, class_accuracy, layout_accuracy,
    match_objects, parse_caption, parse_relations, relation_of, segments_of, semantic_accuracy, shapes_heldout_accuracy,
)
