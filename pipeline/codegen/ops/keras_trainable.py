"""Keras batch norms and dropout layers (``ai.keras2torch::<kind>``, one node per layer,
``core.trainable``) as modules that train as Keras does and, in ``eval()``, compute what
Keras' inference computes.

- ``BatchNormalization`` -> ``KerasBatchNorm{1,2,3}d``, a subclass of ``nn.BatchNorm*d``
  (``eps`` Keras', ``momentum = 1 - Keras' momentum``; weight, bias, running mean and
  variance from Keras, ones/zeros frozen where Keras has no ``scale``/``center``). Its
  training forward normalises with the batch statistics as torch does but updates
  ``running_var`` with the biased batch variance, as Keras does; a layer with
  ``trainable=False`` stays in inference mode under ``train()`` and its parameters do not
  require grad. A channel axis other than 1 is moved to 1 and back.
- ``Dropout`` -> ``nn.Dropout``; ``SpatialDropout{1,2,3}D`` -> ``nn.Dropout{1,2,3}d`` on
  channels-first data, else ``KerasSpatialDropout`` (whole channels on the Keras axis);
  ``AlphaDropout`` -> ``nn.AlphaDropout`` (the same ``a``, ``b`` as Keras);
  ``GaussianNoise``/``GaussianDropout`` -> ``KerasGaussianNoise``/``KerasGaussianDropout``,
  active in ``train()`` only.
- ``ActivityRegularization`` (the identity node after an activity-regularized layer's output)
  -> ``KerasActivityRegularizer``, which records Keras' term for ``regularization_loss()``.
"""

from __future__ import annotations

import numpy as np

from pipeline.codegen.gen import Gen, Unsupported, attrs
from pipeline.core.registry import handles
from pipeline.core.trainable import DOMAIN, ActivitySpec, BatchNormSpec, DropoutSpec, from_json

BATCHNORM_SOURCE = '''class _KerasBatchNorm:
    """Keras' BatchNormalization on an ``nn.BatchNorm*d``: the moving variance follows the
    biased batch variance; ``trainable=False`` keeps inference mode under ``train()``."""

    def _keras_init(self, axis, center, scale, trainable):
        self.axis, self.keras_trainable = axis, trainable
        if not scale or not trainable:
            self.weight.requires_grad_(False)
        if not center or not trainable:
            self.bias.requires_grad_(False)

    def forward(self, x):
        if self.axis != 1:
            x = x.movedim(self.axis, 1)
        if self.training and self.keras_trainable:
            dims = [0, *range(2, x.dim())]
            with torch.no_grad():
                var, mean = torch.var_mean(x, dims, correction=0)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
                self.num_batches_tracked += 1
            y = F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        else:
            y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return y.movedim(1, self.axis) if self.axis != 1 else y
'''

BATCHNORM_RANK_SOURCE = '''class KerasBatchNorm{k}d(_KerasBatchNorm, nn.BatchNorm{k}d):
    def __init__(self, num_features, eps, momentum, axis=1, center=True, scale=True, trainable=True):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self._keras_init(axis, center, scale, trainable)
'''

SPATIAL_SOURCE = '''class KerasSpatialDropout(nn.Module):
    """Keras' SpatialDropout on channels at ``axis``: whole channels of each sample dropped."""

    def __init__(self, p, axis):
        super().__init__()
        self.p, self.axis = p, axis

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        shape = [1] * x.dim()
        shape[0], shape[self.axis] = x.shape[0], x.shape[self.axis]
        keep = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)
'''

NOISE_SOURCE = '''class KerasGaussianNoise(nn.Module):
    """Keras' GaussianNoise: ``x + N(0, stddev)`` in training, the identity in eval."""

    def __init__(self, stddev):
        super().__init__()
        self.stddev = stddev

    def forward(self, x):
        return x + torch.randn_like(x) * self.stddev if self.training and self.stddev > 0 else x
'''

GAUSSIAN_DROPOUT_SOURCE = '''class KerasGaussianDropout(nn.Module):
    """Keras' GaussianDropout: ``x * N(1, sqrt(p / (1 - p)))`` in training, the identity in eval."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        return x * (1 + torch.randn_like(x) * (self.p / (1 - self.p)) ** 0.5)
'''


def _num(v: float) -> str:
    return repr(round(float(v), 12))


@handles(f"{DOMAIN}::BatchNormalization")
def keras_batchnorm(gen: Gen, node):
    spec = from_json(attrs(node)["keras"])
    assert isinstance(spec, BatchNormSpec)
    w = {}
    for role, name in zip(spec.weights, node.input[1:]):
        w[role] = gen.const(name)
        if w[role] is None:
            raise Unsupported(f"batch norm weight {role} ({name!r}) is computed, not a constant")
    r = gen.rank(node.input[0]) or spec.rank
    if r not in (2, 3, 4, 5):
        raise Unsupported(f"BatchNormalization on rank {r} data")
    k = {2: 1, 3: 1, 4: 2, 5: 3}[r]
    c = int(w["moving_mean"].shape[0])
    gen.helper("_KerasBatchNorm", BATCHNORM_SOURCE)
    gen.helper(f"KerasBatchNorm{k}d", BATCHNORM_RANK_SOURCE.replace("{k}", str(k)))
    extra = (f", axis={spec.axis}" if spec.axis != 1 else "") + (", center=False" if not spec.center else "") \
        + (", scale=False" if not spec.scale else "") + (", trainable=False" if not spec.trainable else "")
    ctor = f"KerasBatchNorm{k}d({c}, eps={_num(spec.epsilon)}, momentum={_num(1 - spec.momentum)}{extra})"
    params = {"weight": w.get("gamma", np.ones(c, np.float32)), "bias": w.get("beta", np.zeros(c, np.float32)),
              "running_mean": w["moving_mean"], "running_var": w["moving_variance"],
              "num_batches_tracked": np.array(0, dtype=np.int64)}
    mod = gen.submodule(node, ctor, params, name=spec.layer)
    gen.emit(node, f"{mod}({gen.t(node.input[0])})")


@handles(*(f"{DOMAIN}::{k}" for k in ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
                                      "GaussianNoise", "GaussianDropout", "AlphaDropout")))
def keras_dropout(gen: Gen, node):
    spec = from_json(attrs(node)["keras"])
    assert isinstance(spec, DropoutSpec)
    kind, p = spec.kind, _num(spec.rate)
    if kind == "Dropout":
        ctor = f"nn.Dropout({p})"
    elif kind.startswith("SpatialDropout"):
        n = int(kind[-2])
        r = gen.rank(node.input[0]) or spec.rank
        if spec.axis == 1 and r == n + 2:
            ctor = f"nn.Dropout{n}d({p})"
        else:
            gen.helper("KerasSpatialDropout", SPATIAL_SOURCE)
            ctor = f"KerasSpatialDropout({p}, axis={spec.axis})"
    elif kind == "AlphaDropout":
        ctor = f"nn.AlphaDropout({p})"
    elif kind == "GaussianNoise":
        gen.helper("KerasGaussianNoise", NOISE_SOURCE)
        ctor = f"KerasGaussianNoise({_num(spec.stddev)})"
    else:
        gen.helper("KerasGaussianDropout", GAUSSIAN_DROPOUT_SOURCE)
        ctor = f"KerasGaussianDropout({p})"
    mod = gen.submodule(node, ctor, {}, name=spec.layer)
    gen.emit(node, f"{mod}({gen.t(node.input[0])})")


ACTIVITY_SOURCE = '''class KerasActivityRegularizer(nn.Module):
    """Keras' activity regularizer of a layer's output: returns the output unchanged and keeps
    ``loss = (l1 * sum|y| + l2 * sum y**2) / batch`` of the last forward (Keras 3 adds that term
    to ``model.losses`` on every call, training or not), which ``regularization_loss()`` sums.
    Not recorded while ``torch.export`` traces (``model.pt2`` is the inference form)."""

    def __init__(self, l1=0.0, l2=0.0):
        super().__init__()
        self.l1, self.l2 = l1, l2
        self.loss = torch.zeros(())

    def forward(self, x):
        if torch.compiler.is_exporting():
            return x
        term = x.new_zeros(())
        if self.l1:
            term = term + self.l1 * x.abs().sum()
        if self.l2:
            term = term + self.l2 * x.square().sum()
        if x.dim() > 0:   # Keras: divide_no_nan by the batch size
            term = term / x.shape[0] if x.shape[0] else term * 0
        self.loss = term
        return x
'''


@handles(f"{DOMAIN}::ActivityRegularization")
def keras_activity(gen: Gen, node):
    """An activity-regularized layer's output: ``KerasActivityRegularizer`` (one per node, so a
    layer called twice records both calls' terms), its ``loss`` a term of ``regularization_loss()``."""
    spec = from_json(attrs(node)["keras"])
    assert isinstance(spec, ActivitySpec)
    gen.helper("KerasActivityRegularizer", ACTIVITY_SOURCE)
    mod = gen.submodule(node, f"KerasActivityRegularizer(l1={_num(spec.l1)}, l2={_num(spec.l2)})", {},
                        name=f"{spec.layer}_activity")
    gen.reg_terms.append(f"{mod}.loss")
    gen.emit(node, f"{mod}({gen.t(node.input[0])})")
