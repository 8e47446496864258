"""Small keras_hub backbones for ``configs/hub.toml`` (``make zoo CONFIG=configs/hub.toml``),
built from configs: random weights, no preset download. Needs the ``hub`` extra
(``pip install --no-deps -r requirements-hub.txt``; ``make venv`` installs it).

Weights are seeded and perturbed (``zoo_models.perturb``: biases and normalisation statistics
get non-trivial values). Text backbones take ``token_ids`` (drawn below the vocabulary: the
ReversibleEmbedding they feed), ``segment_ids`` (below ``num_segments``: the segment
Embedding) and ``padding_mask`` (0/1); see ``pipeline/stages/export/reference.py``.
"""

import sys
from pathlib import Path

import keras

sys.path.insert(0, str(Path(__file__).resolve().parent))   # loaded by file path from the export stage
from zoo_models import perturb  # noqa: E402


def _hub():
    import keras_hub   # the hub extra

    keras.utils.set_random_seed(1)
    return keras_hub.models


def _done(backbone, name):
    """The backbone as a plain functional model (its outputs, its inputs), perturbed."""
    return perturb(keras.Model(backbone.inputs, backbone.outputs, name=name), seed=1)


TEXT = dict(vocabulary_size=100, num_layers=2, hidden_dim=16, intermediate_dim=32)


def bert():
    m = _hub()
    return _done(m.BertBackbone(num_heads=2, max_sequence_length=32, num_segments=3, dropout=0.0, **TEXT), "bert")


def distil_bert():
    m = _hub()
    return _done(m.DistilBertBackbone(num_heads=2, max_sequence_length=32, dropout=0.0, **TEXT), "distil_bert")


def gpt2():
    m = _hub()
    return _done(m.GPT2Backbone(num_heads=2, max_sequence_length=32, dropout=0.0, **TEXT), "gpt2")


def llama():
    m = _hub()
    return _done(m.LlamaBackbone(num_query_heads=4, num_key_value_heads=2, **TEXT), "llama")


def vit():
    m = _hub()
    return _done(m.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                               mlp_dim=32), "vit")


def resnet():
    m = _hub()
    return _done(m.ResNetBackbone(input_conv_filters=[64], input_conv_kernel_sizes=[7],
                                  stackwise_num_filters=[64, 32], stackwise_num_blocks=[1, 2],
                                  stackwise_num_strides=[1, 2], block_type="basic_block",
                                  image_shape=(32, 32, 3)), "resnet")


def mobilenet():
    m = _hub()
    return _done(m.MobileNetBackbone(
        stackwise_expansion=[[40, 56], [64, 144]],
        stackwise_num_blocks=[2, 2],
        stackwise_num_filters=[[16, 16], [24, 24]],
        stackwise_kernel_size=[[3, 3], [5, 5]],
        stackwise_num_strides=[[2, 1], [2, 1]],
        stackwise_se_ratio=[[None, None], [0.25, 0.25]],
        stackwise_activation=[["relu", "relu"], ["hard_swish", "hard_swish"]],
        stackwise_padding=[[1, 1], [2, 2]],
        output_num_filters=48,
        depthwise_filters=8,
        depthwise_stride=2,
        depthwise_residual=False,
        last_layer_filter=48,
        squeeze_and_excite=0.5,
        image_shape=(32, 32, 3)), "mobilenet")


def _mit(m):
    return m.MiTBackbone(image_shape=(32, 32, 3), num_layers=2, hidden_dims=[8, 16], layerwise_depths=[1, 1],
                         layerwise_num_heads=[1, 2], layerwise_sr_ratios=[2, 1], layerwise_patch_sizes=[7, 3],
                         layerwise_strides=[4, 2], max_drop_path_rate=0.0)


def mit():
    m = _hub()
    return _done(_mit(m), "mit")


def segformer():
    m = _hub()
    return _done(m.SegFormerBackbone(image_encoder=_mit(m), projection_filters=16), "segformer")
