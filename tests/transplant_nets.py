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
    norms: Keras' 1e-3 reproduces Keras, torch's default 1e-5 does not."""

    def __init__(self, eps=1e-3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8, eps=eps)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8, eps=eps)
        self.short = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)) + self.short(x))
        return self.fc(y.mean((2, 3)))


def res_block_torch_eps():
    return ResBlock(eps=1e-5)


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


class SeedExtra(SeedPermute):
    """SeedPermute with a layer Keras does not have: listed as unmatched, never filled."""

    def __init__(self):
        super().__init__()
        self.extra = nn.Linear(1, 1)

    def forward(self, x):
        return self.extra(super().forward(x))
