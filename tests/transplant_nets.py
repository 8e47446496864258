"""Hand-written PyTorch modules for ``test_transplant.py`` (``--into tests/transplant_nets.py:NAME``):
the ports a person writes, some with the classic traps in them."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class SeedNoPermute(nn.Module):
    """configs/models.py:conv1d_flatten_dense ported with transposed kernels and no permute:
    flattens (N, C, L), where Keras flattens (N, L, C)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 2)
        self.fc = nn.Linear(254, 1)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


class SeedPermute(SeedNoPermute):
    """The same with the permute back to channels-last before the flatten."""

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x).permute(0, 2, 1), 1))


class LstmText(nn.Module):
    """Embedding -> LSTM -> Dense on the last step (tests/transplant_models.py:lstm_text)."""

    def __init__(self, vocab=50, dim=8, units=16, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, units, batch_first=True)
        self.fc = nn.Linear(units, classes)

    def forward(self, ids):
        y, _ = self.lstm(self.emb(ids))
        return self.fc(y[:, -1])


class ResBlock(nn.Module):
    """A ResNet-style block (tests/transplant_models.py:resnet_block); ``eps`` of its batch
    norms: Keras' 1e-3 reproduces Keras, torch's default 1e-5 does not; ``momentum``: torch's
    default 0.1 is not Keras' 0.99 (torch 0.01), a warning only."""

    def __init__(self, eps=1e-3, momentum=0.1):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8, eps=eps, momentum=momentum)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8, eps=eps, momentum=momentum)
        self.short = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)) + self.short(x))
        return self.fc(y.mean((2, 3)))


def res_block_torch_eps():
    return ResBlock(eps=1e-5)


def res_block_keras_momentum():
    return ResBlock(momentum=0.01)


class GruNet(nn.Module):
    """nn.GRU -> Dense on the last step (tests/transplant_models.py:gru_reset_before / _after)."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 6, batch_first=True)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        y, _ = self.gru(x)
        return self.fc(y[:, -1])


class StridedConv(nn.Module):
    """Conv2D(8, 3, strides=2, padding="same") ported as nn.Conv2d(padding=1)
    (tests/transplant_models.py:strided_same)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


def mobilenet_v2():
    import torchvision

    return torchvision.models.mobilenet_v2()


def vgg16():
    import torchvision

    return torchvision.models.vgg16()


class SeedConvTwice(SeedPermute):
    """SeedPermute whose forward calls its conv a second time (a norm it computes and drops)."""

    def forward(self, x):
        self.conv(x).norm()
        return super().forward(x)


class GeluNet(nn.Module):
    """Dense -> GELU -> Dense (tests/transplant_models.py:gelu_exact / gelu_tanh)."""

    def __init__(self, approximate="none"):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def gelu_net_tanh():
    return GeluNet("tanh")


class OldHardSigmoid(nn.Module):
    """Keras 2 / tf.keras' hard sigmoid, clip(0.2 x + 0.5, 0, 1): not Keras 3's."""

    def forward(self, x):
        return (0.2 * x + 0.5).clamp(0, 1)


class HardSigmoidNet(nn.Module):
    """Dense(hard_sigmoid) -> Dense (tests/transplant_models.py:hard_sigmoid); ``old``: Keras 2's definition."""

    def __init__(self, old=False):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act = OldHardSigmoid() if old else nn.Hardsigmoid()
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def hard_sigmoid_net_old():
    return HardSigmoidNet(old=True)


class UpNet(nn.Module):
    """Conv -> Upsample(2) -> Conv -> relu -> mean -> Linear (tests/transplant_models.py:upsample_bilinear)."""

    def __init__(self, mode="bilinear", align_corners=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode=mode, align_corners=None if mode == "nearest" else align_corners)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.relu(self.conv2(self.up(self.conv1(x)))).mean((2, 3)))


def up_net_nearest():
    return UpNet("nearest")


def up_net_align_corners():
    return UpNet("bilinear", align_corners=True)


class SeedExtra(SeedPermute):
    """SeedPermute with a layer Keras does not have: listed as unmatched, never filled."""

    def __init__(self):
        super().__init__()
        self.extra = nn.Linear(1, 1)

    def forward(self, x):
        return self.extra(super().forward(x))
