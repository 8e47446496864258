"""Keras 3 models beyond keras.applications for ``test_beyond.py``
(``MODEL=tests/builders_beyond.py:NAME``): padding modes on any rank in custom layers built on
``keras.ops.pad``, preprocessing layers inside a model, structured data on int inputs.
Weights are perturbed (``models.perturb``) so that a wrong branch cannot hide behind an
identity."""

import sys
from pathlib import Path

import keras
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))   # loaded by file path from the export stage
from models import perturb  # noqa: E402

L = keras.layers


def _seed():
    keras.utils.set_random_seed(3)


@keras.saving.register_keras_serializable(package="beyond")
class OpsPad(L.Layer):
    """``keras.ops.pad`` with a mode, the way custom front-ends (a CQT's reflect padding) use it."""

    def __init__(self, pads, mode="reflect", **kw):
        super().__init__(**kw)
        self.pads, self.mode = [tuple(p) for p in pads], mode

    def call(self, x):
        return keras.ops.pad(x, self.pads, mode=self.mode)

    def get_config(self):
        return {**super().get_config(), "pads": self.pads, "mode": self.mode}


def _named(inputs, outs: dict, name: str):
    return perturb(keras.Model(inputs, [L.Identity(name=f"out_{k}")(v) for k, v in outs.items()], name=name))


def pad_modes():
    """Reflect and symmetric padding on rank 3, 4 and 5 tensors, several axes (TensorFlow's
    ``keras.ops.pad`` has no "edge" mode; edge is checked op by op in ``test_codegen_ops.py``)."""
    _seed()
    x3 = keras.Input((9, 4), name="x3")
    x4 = keras.Input((8, 7, 3), name="x4")
    x5 = keras.Input((6, 5, 7, 2), name="x5")
    outs = {}
    for mode in ("reflect", "symmetric"):
        m = mode
        outs[f"{mode}_r3"] = OpsPad([(0, 0), (2, 3), (0, 0)], m)(x3)
        outs[f"{mode}_r4"] = OpsPad([(0, 0), (1, 2), (3, 1), (0, 0)], m)(L.Conv2D(4, 3, name=f"conv_{mode}")(x4))
        outs[f"{mode}_r5"] = OpsPad([(0, 0), (2, 1), (0, 0), (3, 3), (0, 0)], m)(x5)
        outs[f"{mode}_r5_all"] = OpsPad([(0, 0), (1, 1), (2, 1), (1, 2), (0, 0)], m)(x5)
    return _named([x3, x4, x5], outs, "pad_modes")


def _images(n=16, size=(20, 24, 3)):
    return np.random.default_rng(0).uniform(0, 255, (n, *size)).astype("float32")


def preprocessing(interpolation="bilinear", crop=False):
    _seed()
    x = keras.Input((20, 24, 3), name="image")
    norm = L.Normalization(name="norm")
    norm.adapt(_images() / 255.0)
    y = L.Rescaling(1 / 255.0, name="rescale")(x)
    y = norm(y)
    y = L.Resizing(12, 10, interpolation=interpolation, crop_to_aspect_ratio=crop, name="resize")(y)
    y = L.CenterCrop(8, 8, name="crop")(y)
    y = L.Conv2D(4, 3, name="conv")(y)
    y = L.Normalization(mean=[0.1, -0.2, 0.3, 0.0], variance=[1.5, 0.5, 2.0, 1.0], name="norm_given")(y)
    y = L.Flatten(name="flat")(y)
    return perturb(keras.Model(x, L.Dense(3, name="dense")(y), name="preprocessing"))


def preprocessing_bilinear():
    return preprocessing("bilinear", False)


def preprocessing_bilinear_crop():
    return preprocessing("bilinear", True)


def preprocessing_nearest():
    return preprocessing("nearest", False)


def preprocessing_nearest_crop():
    return preprocessing("nearest", True)


def category_encoding():
    """CategoryEncoding one_hot / multi_hot / count on int inputs, beside a float input."""
    _seed()
    cat = keras.Input((1,), dtype="int32", name="cat")
    tags = keras.Input((4,), dtype="int32", name="tags")
    num = keras.Input((3,), name="num")
    one = L.CategoryEncoding(7, output_mode="one_hot", name="one_hot")(cat)
    multi = L.CategoryEncoding(9, output_mode="multi_hot", name="multi_hot")(tags)
    count = L.CategoryEncoding(9, output_mode="count", name="count")(tags)
    y = L.Concatenate(name="concat")([one, multi, count, num])
    y = L.Dense(8, activation="relu", name="hidden")(y)
    return perturb(keras.Model([cat, tags, num], L.Dense(2, name="out")(y), name="category_encoding"))


def embedding_ranges():
    """Int inputs feeding an Embedding (input_dim 50), a CategoryEncoding (num_tokens 5) and
    both (the narrower range wins): reference inputs drawn where the model can index."""
    _seed()
    ids = keras.Input((6,), dtype="int32", name="ids")
    seg = keras.Input((6,), dtype="int32", name="seg")
    e = L.Embedding(50, 4, name="tokens")(ids)
    s = L.Embedding(3, 4, name="segments")(seg)
    y = L.GlobalAveragePooling1D(name="pool")(L.Add(name="sum")([e, s]))
    cat = L.CategoryEncoding(3, output_mode="count", name="seg_count")(seg)
    y = L.Concatenate(name="concat")([y, cat])
    return perturb(keras.Model([ids, seg], L.Dense(2, name="out")(y), name="embedding_ranges"))


def integer_lookup():
    """IntegerLookup on an int input: tf2onnx cannot export its hash table; the error names it."""
    _seed()
    code = keras.Input((1,), dtype="int64", name="code")
    y = L.IntegerLookup(vocabulary=[3, 7, 11, 20, 42], output_mode="one_hot", name="lookup")(code)
    return keras.Model(code, L.Dense(2, name="out")(y), name="integer_lookup")


def hashing():
    """Hashing on an int input: TensorFlow hashes its string form (StringToHashBucketFast),
    which tf2onnx has no converter for; the error names the layer."""
    _seed()
    ids = keras.Input((3,), dtype="int64", name="ids")
    y = L.Hashing(num_bins=6, output_mode="multi_hot", name="hashing")(ids)
    return keras.Model(ids, L.Dense(2, name="out")(y), name="hashing")


def string_lookup():
    """StringLookup on a string input: tf2onnx cannot export its hash table; the error names it."""
    _seed()
    s = keras.Input((1,), dtype="string", name="word")
    y = L.StringLookup(vocabulary=["a", "b", "c"], output_mode="one_hot", name="string_lookup")(s)
    return keras.Model(s, L.Dense(2, name="out")(y), name="string_lookup")


@keras.saving.register_keras_serializable(package="beyond")
class Sampling(L.Layer):
    """The VAE reparameterisation of Keras' VAE example: ``z_mean + exp(z_log_var / 2) * eps``,
    ``eps ~ N(0, 1)`` drawn at every call, inference included."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        eps = keras.random.normal(keras.ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + keras.ops.exp(0.5 * z_log_var) * eps


def vae_encoder():
    """The encoder of Keras' VAE example (smaller): z_mean and z_log_var are deterministic,
    z draws random numbers at inference (``Sampling``)."""
    _seed()
    x = keras.Input((12, 12, 1), name="image")
    y = L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv1")(x)
    y = L.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv2")(y)
    y = L.Flatten(name="flat")(y)
    y = L.Dense(16, activation="relu", name="hidden")(y)
    z_mean = L.Dense(2, name="z_mean")(y)
    z_log_var = L.Dense(2, name="z_log_var")(y)
    z = Sampling(name="sampling")([z_mean, z_log_var])
    return perturb(keras.Model(x, [z_mean, z_log_var, z], name="vae_encoder"))


@keras.saving.register_keras_serializable(package="beyond")
class TruncatedNoise(L.Layer):
    """Adds ``keras.random.truncated_normal`` noise at every call: ONNX has no truncated normal."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seed_generator = keras.random.SeedGenerator(7)

    def call(self, x):
        return x + 0.1 * keras.random.truncated_normal(keras.ops.shape(x), seed=self.seed_generator)


def truncated_noise():
    """A draw at inference the pipeline cannot convert: export stops naming the layer."""
    _seed()
    x = keras.Input((4,), name="x")
    y = TruncatedNoise(name="noise")(L.Dense(3, name="dense")(x))
    return perturb(keras.Model(x, L.Dense(2, name="out")(y), name="truncated_noise"))


def permute_flatten_dense():
    """Keras ``Permute`` before ``Flatten -> Dense`` on rank 3 and 4 (and a Permute read by a
    Dense beside the Flatten): the permutation can live in the Dense rows, as the Flatten fold's."""
    _seed()
    img = keras.Input((6, 5, 3), name="image")
    seq = keras.Input((7, 2), name="seq")
    y = L.Conv2D(4, 3, padding="same", name="conv2d")(img)
    y = L.Flatten(name="flat2d")(L.Permute((2, 1, 3), name="permute_hw")(y))
    s = L.Conv1D(3, 3, name="conv1d")(seq)
    s = L.Flatten(name="flat1d")(L.Permute((2, 1), name="permute_lc")(s))
    y = L.Concatenate(name="concat")([y, s])
    return perturb(keras.Model([img, seq], L.Dense(3, name="dense")(y), name="permute_flatten_dense"))


@keras.saving.register_keras_serializable(package="beyond")
class HeadSplitAttention(L.Layer):
    """Self-attention written the way hand-made transformers write it: Dense q/k/v, heads split
    by ``reshape -> transpose(0, 2, 1, 3)``, ``matmul(q, transpose(k))``, softmax, ``matmul(., v)``,
    heads merged by ``transpose -> reshape``."""

    def __init__(self, heads=2, key_dim=4, **kw):
        super().__init__(**kw)
        self.heads, self.key_dim = heads, key_dim
        self.q, self.k, self.v = (L.Dense(heads * key_dim, name=n) for n in ("q", "k", "v"))

    def build(self, shape):
        for d in (self.q, self.k, self.v):
            d.build(shape)

    def _split(self, x):
        b, t = keras.ops.shape(x)[0], keras.ops.shape(x)[1]
        return keras.ops.transpose(keras.ops.reshape(x, (b, t, self.heads, self.key_dim)), (0, 2, 1, 3))

    def call(self, x):
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        scores = keras.ops.matmul(q, keras.ops.transpose(k, (0, 1, 3, 2))) / float(np.sqrt(self.key_dim))
        y = keras.ops.matmul(keras.ops.softmax(scores, axis=-1), v)
        y = keras.ops.transpose(y, (0, 2, 1, 3))
        return keras.ops.reshape(y, (keras.ops.shape(x)[0], keras.ops.shape(x)[1], self.heads * self.key_dim))

    def get_config(self):
        return {**super().get_config(), "heads": self.heads, "key_dim": self.key_dim}


def attention_heads():
    """Conv1D features into a hand-written head-split attention and a Keras MultiHeadAttention,
    pooled, and the conv features flattened into a Dense: the Transposes of the head split are
    the model's own, the one before the Flatten a layout left-over."""
    _seed()
    x = keras.Input((10, 3), name="seq")
    y = L.Conv1D(8, 3, padding="same", name="conv")(x)
    a = HeadSplitAttention(name="attn")(y)
    m = L.MultiHeadAttention(2, 4, name="mha")(y, y)
    flat = L.Dense(2, name="flat_out")(L.Flatten(name="flat")(y))   # a layout Transpose (before Flatten)
    y = L.Add(name="sum")([a, m])
    y = L.GlobalAveragePooling1D(name="pool")(y)
    return perturb(keras.Model(x, [L.Dense(2, name="out")(y), flat], name="attention_heads"))


# ---- issue 16's own suite in the style of the keras.io code examples: point clouds
# (PointNet, with its T-Nets and orthogonal activity regularizer), super-resolution (ESPCN's
# depth-to-space), a text Transformer classifier, an audio front-end on keras.ops (reflect
# padding, framing by gather, windowed DFT as matmuls, log power), a timeseries Transformer,
# a U-Net-like segmentation (separable convs, Conv2DTranspose, UpSampling2D, residuals).
# Scaled down; weights perturbed.

ops = keras.ops

def _seed5():
    keras.utils.set_random_seed(5)


class OrthogonalRegularizer(keras.regularizers.Regularizer):
    def __init__(self, num_features, l2reg=0.001):
        self.num_features, self.l2reg = num_features, l2reg
        self.eye = ops.eye(num_features)

    def __call__(self, x):
        x = ops.reshape(x, (-1, self.num_features, self.num_features))
        xxt = ops.tensordot(x, x, axes=(2, 2))
        xxt = ops.reshape(xxt, (-1, self.num_features, self.num_features))
        return ops.sum(self.l2reg * ops.square(xxt - self.eye))

    def get_config(self):
        return {"num_features": self.num_features, "l2reg": self.l2reg}


def _conv_bn(x, filters, name):
    x = L.Conv1D(filters, 1, padding="valid", name=f"{name}_conv")(x)
    x = L.BatchNormalization(momentum=0.0, name=f"{name}_bn")(x)
    return L.Activation("relu", name=f"{name}_relu")(x)


def _dense_bn(x, units, name):
    x = L.Dense(units, name=f"{name}_dense")(x)
    x = L.BatchNormalization(momentum=0.0, name=f"{name}_bn")(x)
    return L.Activation("relu", name=f"{name}_relu")(x)


def _tnet(inputs, k, name):
    x = _conv_bn(inputs, 8, f"{name}_c1")
    x = _conv_bn(x, 16, f"{name}_c2")
    x = L.GlobalMaxPooling1D(name=f"{name}_pool")(x)
    x = _dense_bn(x, 16, f"{name}_d1")
    x = L.Dense(k * k, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(np.eye(k).flatten()),
                activity_regularizer=OrthogonalRegularizer(k), name=f"{name}_mat")(x)
    feat_t = L.Reshape((k, k), name=f"{name}_reshape")(x)
    return L.Dot(axes=(2, 1), name=f"{name}_dot")([inputs, feat_t])


def pointnet():
    """keras.io "Point cloud classification with PointNet", scaled down: 64 points."""
    _seed5()
    inputs = keras.Input((64, 3), name="points")
    x = _tnet(inputs, 3, "tnet1")
    x = _conv_bn(x, 8, "c1")
    x = _conv_bn(x, 8, "c2")
    x = _tnet(x, 8, "tnet2")
    x = _conv_bn(x, 8, "c3")
    x = _conv_bn(x, 16, "c4")
    x = L.GlobalMaxPooling1D(name="pool")(x)
    x = _dense_bn(x, 16, "d1")
    x = L.Dropout(0.3, name="drop")(x)
    return perturb(keras.Model(inputs, L.Dense(5, name="logits")(x), name="pointnet"))


class DepthToSpace(L.Layer):
    def __init__(self, block, **kw):
        super().__init__(**kw)
        self.block = block

    def call(self, x):
        b = self.block
        n, h, w, c = ops.shape(x)
        x = ops.reshape(x, (-1, h, w, b, b, c // (b * b)))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (-1, h * b, w * b, c // (b * b)))

    def get_config(self):
        return {**super().get_config(), "block": self.block}


def espcn():
    """keras.io "Image Super-Resolution using an Efficient Sub-Pixel CNN": upscale 3."""
    _seed5()
    inputs = keras.Input((12, 12, 1), name="lowres")
    x = L.Conv2D(16, 5, padding="same", activation="relu", name="c1")(inputs)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="c2")(x)
    x = L.Conv2D(1 * 3 ** 2, 3, padding="same", name="c3")(x)
    return perturb(keras.Model(inputs, DepthToSpace(3, name="d2s")(x), name="espcn"))


class TokenAndPositionEmbedding(L.Layer):
    def __init__(self, maxlen, vocab_size, embed_dim, **kw):
        super().__init__(**kw)
        self.token_emb = L.Embedding(vocab_size, embed_dim)
        self.pos_emb = L.Embedding(maxlen, embed_dim)

    def call(self, x):
        positions = ops.arange(0, ops.shape(x)[-1], 1)
        return self.token_emb(x) + self.pos_emb(positions)


class TransformerBlock(L.Layer):
    def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1, **kw):
        super().__init__(**kw)
        self.att = L.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.ffn = keras.Sequential([L.Dense(ff_dim, activation="relu"), L.Dense(embed_dim)])
        self.layernorm1 = L.LayerNormalization(epsilon=1e-6)
        self.layernorm2 = L.LayerNormalization(epsilon=1e-6)
        self.dropout1, self.dropout2 = L.Dropout(rate), L.Dropout(rate)

    def call(self, inputs):
        out1 = self.layernorm1(inputs + self.dropout1(self.att(inputs, inputs)))
        return self.layernorm2(out1 + self.dropout2(self.ffn(out1)))


def text_transformer():
    """keras.io "Text classification with Transformer", small."""
    _seed5()
    inputs = keras.Input((20,), dtype="int32", name="tokens")
    x = TokenAndPositionEmbedding(20, 50, 16, name="emb")(inputs)
    x = TransformerBlock(16, 2, 16, name="block")(x)
    x = L.GlobalAveragePooling1D(name="gap")(x)
    x = L.Dropout(0.1, name="drop")(x)
    x = L.Dense(8, activation="relu", name="d1")(x)
    return perturb(keras.Model(inputs, L.Dense(2, name="logits")(x), name="text_transformer"))


class LogSpectrogram(L.Layer):
    """Framing (reflect pad, strided frames), Hann window, DFT as two matmuls, log power."""

    def __init__(self, n_fft=32, hop=8, **kw):
        super().__init__(**kw)
        self.n_fft, self.hop = n_fft, hop
        n = np.arange(n_fft)
        k = np.arange(n_fft // 2 + 1)[:, None]
        win = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
        self.cos = (np.cos(2 * np.pi * k * n / n_fft) * win).T.astype("float32")
        self.sin = (-np.sin(2 * np.pi * k * n / n_fft) * win).T.astype("float32")

    def call(self, x):   # x: (N, T, 1)
        p = self.n_fft // 2
        x = ops.pad(x, [(0, 0), (p, p), (0, 0)], mode="reflect")
        x = ops.squeeze(x, -1)
        t = ops.shape(x)[1]
        n_frames = 1 + (t - self.n_fft) // self.hop
        idx = ops.arange(n_frames)[:, None] * self.hop + ops.arange(self.n_fft)[None, :]
        frames = ops.take(x, idx, axis=1)                   # (N, F, n_fft)
        re, im = ops.matmul(frames, self.cos), ops.matmul(frames, self.sin)
        return ops.log(re * re + im * im + 1e-6)[..., None]   # (N, F, bins, 1)


def audio_frontend():
    """A custom spectrogram front-end on keras.ops, then a small CNN classifier."""
    _seed5()
    inputs = keras.Input((256, 1), name="wave")
    x = LogSpectrogram(name="spec")(inputs)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(x)
    x = L.MaxPooling2D(2, name="pool")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Flatten(name="flatten")(x)
    return perturb(keras.Model(inputs, L.Dense(4, name="logits")(x), name="audio_frontend"))


def timeseries_transformer():
    """keras.io "Timeseries classification with a Transformer model", small."""
    _seed5()
    inputs = keras.Input((24, 3), name="series")
    x = inputs
    for i in range(2):
        y = L.LayerNormalization(epsilon=1e-6, name=f"ln{i}a")(x)
        y = L.MultiHeadAttention(key_dim=8, num_heads=2, dropout=0.1, name=f"mha{i}")(y, y)
        y = L.Dropout(0.1, name=f"drop{i}")(y)
        res = L.Add(name=f"add{i}a")([y, x])
        y = L.LayerNormalization(epsilon=1e-6, name=f"ln{i}b")(res)
        y = L.Conv1D(4, 1, activation="relu", name=f"ff{i}a")(y)
        y = L.Conv1D(3, 1, name=f"ff{i}b")(y)
        x = L.Add(name=f"add{i}b")([y, res])
    x = L.GlobalAveragePooling1D(data_format="channels_first", name="gap")(x)
    x = L.Dense(8, activation="relu", name="d1")(x)
    return perturb(keras.Model(inputs, L.Dense(2, name="logits")(x), name="timeseries_transformer"))


def unet_segmentation():
    """keras.io "Image segmentation with a U-Net-like architecture", small: separable convs,
    residual projections, Conv2DTranspose, UpSampling2D."""
    _seed5()
    inputs = keras.Input((32, 32, 3), name="image")
    x = L.Conv2D(8, 3, strides=2, padding="same", name="stem")(inputs)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.Activation("relu", name="stem_relu")(x)
    prev = x
    for f in (16, 32):
        x = L.Activation("relu", name=f"d{f}_relu1")(x)
        x = L.SeparableConv2D(f, 3, padding="same", name=f"d{f}_sep1")(x)
        x = L.BatchNormalization(name=f"d{f}_bn1")(x)
        x = L.MaxPooling2D(3, strides=2, padding="same", name=f"d{f}_pool")(x)
        res = L.Conv2D(f, 1, strides=2, padding="same", name=f"d{f}_res")(prev)
        x = prev = L.add([x, res], name=f"d{f}_add")
    for f in (32, 16, 8):
        x = L.Activation("relu", name=f"u{f}_relu")(x)
        x = L.Conv2DTranspose(f, 3, padding="same", name=f"u{f}_tconv")(x)
        x = L.BatchNormalization(name=f"u{f}_bn")(x)
        x = L.UpSampling2D(2, name=f"u{f}_up")(x)
        res = L.UpSampling2D(2, name=f"u{f}_resup")(prev)
        res = L.Conv2D(f, 1, padding="same", name=f"u{f}_res")(res)
        x = prev = L.add([x, res], name=f"u{f}_add")
    x = L.Conv2D(3, 3, padding="same", name="seg")(x)
    return perturb(keras.Model(inputs, L.Resizing(32, 32, name="resize")(x), name="unet_segmentation"))
