"""The torch half of the training check: the generated ``model.py`` in ``train()``, on the
same batch, targets, loss and SGD steps as ``keras_side`` (inputs and targets moved to the
port's layout: channels-first where the rewrite made them so; a mean of squares does not
depend on the order of the elements).

The dropout family's rates are set to 0 for the comparison (``zero_rates``: ``p`` of
``nn.Dropout*``/``nn.AlphaDropout`` and the generated ``Keras*`` noise modules, ``stddev``
of ``KerasGaussianNoise``, ``dropout``/``recurrent_dropout`` of the ``KerasLSTM``/``KerasGRU``/
``KerasSimpleRNN`` cell modules); ``noise.py`` checks them at their own rates."""

from __future__ import annotations

import numpy as np

from pipeline.tools.training import noise

# module class name -> the attribute that holds its rate (0: identity in training)
RATE_ATTR = {"Dropout": "p", "Dropout1d": "p", "Dropout2d": "p", "Dropout3d": "p", "AlphaDropout": "p",
             "KerasSpatialDropout": "p", "KerasGaussianDropout": "p", "KerasGaussianNoise": "stddev"}


# the recurrent cell modules' own dropout (Keras' ``dropout``/``recurrent_dropout`` arguments)
RECURRENT_ATTRS = {"KerasLSTM": ("dropout", "recurrent_dropout"), "KerasGRU": ("dropout", "recurrent_dropout"),
                   "KerasSimpleRNN": ("dropout", "recurrent_dropout")}


def zero_rates(model) -> dict:
    """Set every dropout-family module's rate (and the recurrent cell modules' ``dropout``/
    ``recurrent_dropout``) to 0; ``{module name: {attr: old rate}}``."""
    zeroed = {}
    for name, m in model.named_modules():
        kind = type(m).__name__
        for attr in RECURRENT_ATTRS.get(kind, (RATE_ATTR[kind],) if kind in RATE_ATTR else ()):
            if getattr(m, attr):
                zeroed.setdefault(name, {})[attr] = float(getattr(m, attr))
                setattr(m, attr, 0.0)
    return zeroed


def _call(model, xs, n_out: int):
    res = model(*xs)
    res = list(res) if isinstance(res, (list, tuple)) else [res]
    if len(res) != n_out:
        raise ValueError(f"the module returned {len(res)} outputs, the model has {n_out}")
    return res


def run(load, feeds: list[np.ndarray], targets: list[np.ndarray], lr: float, steps: int, seed: int,
        expected: dict) -> dict:
    """``load()``: a fresh port (weights as converted). Returns step 0's outputs (port
    layout), loss, gradients by state_dict key (None: no gradient), the state after step 0,
    check 5 (``noise.check`` of ``expected``, {module: {attr: Keras' rate}}, on the input
    shapes the dropout modules saw in step 0), then
    the losses of ``steps`` SGD steps and the state after them, and what was zeroed."""
    import torch

    torch.manual_seed(seed)

    def prepared():
        model = load()
        zeroed = zero_rates(model)
        return model.train(), zeroed

    xs = [torch.from_numpy(np.ascontiguousarray(x)) for x in feeds]
    ts = [torch.from_numpy(np.ascontiguousarray(t)).float() for t in targets]

    def loss_of(model):
        outs = _call(model, xs, len(ts))
        mse = sum(torch.mean((o.float() - t) ** 2) for o, t in zip(outs, ts))
        reg = model.regularization_loss() if hasattr(model, "regularization_loss") else torch.zeros(())
        return outs, mse, reg

    model, zeroed = prepared()
    shapes: dict = {}

    def seen(name):
        def hook(_module, args):
            shapes.setdefault(name, tuple(args[0].shape))   # returns None: the args stay as they are
        return hook

    names = dict(model.named_modules())
    hooks = [names[n].register_forward_pre_hook(seen(n)) for n in set(zeroed) | set(expected) if n in names]
    outs, mse, reg = loss_of(model)
    for h in hooks:
        h.remove()
    loss = mse + reg
    loss.backward()
    grads = {k: (None if p.grad is None else p.grad.detach().numpy().copy()) for k, p in model.named_parameters()}
    requires = {k: bool(p.requires_grad) for k, p in model.named_parameters()}
    after = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    result = {"outputs": [o.detach().numpy() for o in outs], "loss": loss.item(), "mse": mse.item(),
              "regularization": float(reg.detach()), "grads": grads, "requires_grad": requires, "after": after,
              "zeroed": zeroed, "noise": noise.check(model, shapes, expected, zeroed, seed)}
    model, _ = prepared()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        _, mse, reg = loss_of(model)
        loss = mse + reg
        loss.backward()
        opt.step()
        losses.append(loss.item())
    result["sgd_losses"] = losses
    result["final"] = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return result
