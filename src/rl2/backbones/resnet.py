"""ResNet-18 in plain PyTorch, parameter-compatible with torchvision's ``resnet18``.

torchvision is deliberately not a dependency (its wheels are tied to exact torch
builds). This module reproduces ``torchvision.models.resnet18`` so that its
``state_dict()`` has exactly the same keys and shapes: the official checkpoint
``resnet18-f37072fd.pth`` (or any fine-tuned one) loads with ``strict=True``.

Defaults identical to torchvision:

* BatchNorm2d with PyTorch's defaults ``eps=1e-5``, ``momentum=0.1``.
* Conv weights ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``,
  BN weight 1 and bias 0, no zero-init of the last BN in each block
  (torchvision's ``zero_init_residual=False``); ``fc`` keeps ``nn.Linear``'s init.
* Modules are created and initialised in torchvision's order, so under the same
  seed and torch version the random weights coincide with torchvision's too.

Feature read-outs (``forward_features``):

* ``"gap"``: global average pool of layer4 -> 512-d (what ``fc`` sees).
* ``"layer4_2x2"``: layer4 adaptive-average-pooled to 2x2 -> 2048-d at any input size.
* ``"paper"``: the RL2 authors' read-out, ``F.avg_pool2d(layer4, 2)`` flattened;
  at 256 px input layer4 is 8x8, so this is 4x4x512 = 8192-d (size depends on input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

READOUTS = ("gap", "layer4_2x2", "paper")
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = _bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = _bn(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _bn(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._layer(64, 64, 1)
        self.layer2 = self._layer(64, 128, 2)
        self.layer3 = self._layer(128, 256, 2)
        self.layer4 = self._layer(256, 512, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    @staticmethod
    def _layer(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout))

    def layer4_map(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_features(self, x: Tensor, readout: str = "gap") -> Tensor:
        f = self.layer4_map(x)
        if readout == "gap":
            f = self.avgpool(f)
        elif readout == "layer4_2x2":
            f = F.adaptive_avg_pool2d(f, 2)
        elif readout == "paper":
            f = F.avg_pool2d(f, 2)
        else:
            raise ValueError(f"unknown readout {readout!r}; expected one of {READOUTS}")
        return torch.flatten(f, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x, "gap"))


def resnet18(num_classes: int = 1000) -> ResNet18:
    return ResNet18(num_classes)


def random_resnet18(seed: int, num_classes: int = 1000) -> ResNet18:
    """Randomly initialised ResNet-18, identical for a given seed on any machine.

    Init draws only from the CPU generator, which is platform-independent (the
    exact values may still change across torch releases). The RNG is forked so
    the caller's global RNG state is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ResNet18(num_classes)
