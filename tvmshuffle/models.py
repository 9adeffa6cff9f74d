"""Model zoo: ShuffleNet v1 and v2, MobileNet v1 and AlexNet in PyTorch, written from their
papers.

Weights are random with a fixed seed (nothing is downloaded); a user may load a state_dict.
Initialisation keeps activations of order one through the depth of every network, so that a
numerics check of a compiled module compares real numbers, not values that vanished to zero.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import BadInputError, first_line

# Table 1 of the ShuffleNet paper: Stage 2 output channels at 1x for each group count; Stage 3
# and Stage 4 double it twice.
SHUFFLENET_STAGE2_CHANNELS = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}
SHUFFLENET_REPEATS = (4, 8, 4)
SHUFFLENET_SCALES = (0.25, 0.5, 1.0, 1.5, 2.0)
MOBILENET_WIDTHS = (0.25, 0.5, 0.75, 1.0)
# Table 5 of the ShuffleNet V2 paper (Ma et al. 2018): stage 2-4 output channels per scale
# (stage repeats 4/8/4, conv5 1024 filters, 2048 for 2x)
SHUFFLENET_V2_CHANNELS = {0.5: (48, 96, 192), 1.0: (116, 232, 464), 1.5: (176, 352, 704),
                          2.0: (244, 488, 976)}
DEFAULT_SEED = 0


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The paper's channel shuffle: channel axis viewed as (g, n), transposed to (n, g)."""
    n, c, h, w = x.shape
    # (n, c, h, w) -> (n, g, c/g, h, w) -> (n, c/g, g, h, w) -> (n, c, h, w)
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
             relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ShuffleUnit(nn.Module):
    """One ShuffleNet v1 unit (Figure 2 b/c of the paper)."""

    def __init__(self, cin: int, cout: int, groups: int, stride: int, first_grouped: bool = True,
                 shuffle: bool = True):
        super().__init__()
        self.stride = stride
        self.groups = groups
        self.shuffle = shuffle
        mid = cout // 4
        branch_out = cout - cin if stride == 2 else cout
        self.pw1 = _conv_bn(cin, mid, 1, groups=groups if first_grouped else 1)
        self.dw = _conv_bn(mid, mid, 3, stride=stride, groups=mid, relu=False)
        self.pw2 = _conv_bn(mid, branch_out, 1, groups=groups, relu=False)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw1(x)
        if self.shuffle and self.groups > 1:
            y = channel_shuffle(y, self.groups)
        y = self.pw2(self.dw(y))
        if self.stride == 2:
            return torch.relu(torch.cat([self.shortcut(x), y], dim=1))
        return torch.relu(x + y)


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


class ShuffleNetV1(nn.Module):
    """ShuffleNet v1 per Table 1: g groups, width scale s ("ShuffleNet s x": every layer's
    channels times s), stage repeats 4/8/4."""

    def __init__(self, groups: int = 3, scale: float = 1.0, num_classes: int = 1000,
                 shuffle: bool = True):
        """``shuffle=False`` deletes the channel shuffles: a network that computes something
        else, used only as the lower bound of what a shuffle can cost."""
        super().__init__()
        # Every unit needs its bottleneck (out/4) divisible by g, so stage widths are rounded
        # to multiples of 4g; at 1x this reproduces Table 1 exactly. Conv1 (24 channels at 1x)
        # scales with s but keeps at least 12 filters, rounded to a multiple of g so that
        # Stage 2's first unit, whose branch gives out - in channels, stays divisible by g.
        # This reproduces the paper's 13/38/140/292/524 MFLOPs for 0.25x..2x within 3%.
        width = _round_to(SHUFFLENET_STAGE2_CHANNELS[groups] * scale, 4 * groups)
        cin = _round_to(max(12.0, 24 * scale), groups)
        self.conv1 = _conv_bn(3, cin, 3, stride=2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        units: list[nn.Module] = []
        for stage, repeat in enumerate(SHUFFLENET_REPEATS):
            cout = width * 2**stage
            for i in range(repeat):
                units.append(ShuffleUnit(cin if i == 0 else cout, cout, groups,
                                         stride=2 if i == 0 else 1,
                                         first_grouped=not (stage == 0 and i == 0),
                                         shuffle=shuffle))
            cin = cout
        self.stages = nn.Sequential(*units)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.maxpool(self.conv1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class ShuffleV2Unit(nn.Module):
    """One ShuffleNet v2 unit (Figure 3 c/d of the v2 paper), written as public code writes it:
    a stride-1 unit splits the channels in halves (``chunk``), passes the first through and
    transforms the second; a stride-2 unit transforms the input in both branches; the halves
    are concatenated and shuffled with two groups."""

    def __init__(self, cin: int, cout: int, stride: int, shuffle: bool = True):
        super().__init__()
        self.stride = stride
        self.shuffle = shuffle  # False: the lower bound of what the shuffle can cost
        half = cout // 2
        if stride == 2:
            self.branch1 = nn.Sequential(_conv_bn(cin, cin, 3, stride=2, groups=cin, relu=False),
                                         _conv_bn(cin, half, 1))
        branch_in = cin if stride == 2 else half
        self.branch2 = nn.Sequential(_conv_bn(branch_in, half, 1),
                                     _conv_bn(half, half, 3, stride=stride, groups=half,
                                              relu=False),
                                     _conv_bn(half, half, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            left, right = x.chunk(2, dim=1)
            out = torch.cat([left, self.branch2(right)], dim=1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        return channel_shuffle(out, 2) if self.shuffle else out


class ShuffleNetV2(nn.Module):
    """ShuffleNet v2 per Table 5 of its paper: conv1 24 filters 3x3 stride 2, max pool, stages
    of 4/8/4 units (the first of each stride 2), conv5 1x1, global pool, FC."""

    def __init__(self, scale: float = 1.0, num_classes: int = 1000, shuffle: bool = True):
        super().__init__()
        self.conv1 = _conv_bn(3, 24, 3, stride=2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        units: list[nn.Module] = []
        cin = 24
        for cout, repeat in zip(SHUFFLENET_V2_CHANNELS[scale], SHUFFLENET_REPEATS):
            for i in range(repeat):
                units.append(ShuffleV2Unit(cin if i == 0 else cout, cout, 2 if i == 0 else 1,
                                           shuffle))
            cin = cout
        self.stages = nn.Sequential(*units)
        conv5 = 2048 if scale == 2.0 else 1024
        self.conv5 = _conv_bn(cin, conv5, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(conv5, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.stages(self.maxpool(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class MobileNetV1(nn.Module):
    """MobileNet v1 (Howard et al. 2017) with width multiplier alpha."""

    # (output channels, stride) of each depthwise-separable block
    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
              (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

    def __init__(self, width: float = 1.0, num_classes: int = 1000):
        super().__init__()
        cin = int(32 * width)
        layers: list[nn.Module] = [_conv_bn(3, cin, 3, stride=2)]
        for cout, stride in self.BLOCKS:
            cout = int(cout * width)
            layers += [_conv_bn(cin, cin, 3, stride=stride, groups=cin), _conv_bn(cin, cout, 1)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class AlexNet(nn.Module):
    """Single-tower AlexNet (64/192/384/256/256 filters, Krizhevsky 2014's one-GPU variant).

    Adaptive average pooling to 6x6 before the classifier lets the network take the larger
    inputs of the paper's Table 8; at 224x224 the pooling is the identity.
    """

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )
        self.pool = nn.AdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 36, 4096), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@dataclass(frozen=True)
class ZooEntry:
    """A named model of the zoo and how to build it."""

    name: str
    family: str
    factory: Callable[[], nn.Module]
    min_input: int  # smallest square input the network accepts


def _zoo() -> dict[str, ZooEntry]:
    entries = [ZooEntry("alexnet", "alexnet", AlexNet, 63)]
    for width in MOBILENET_WIDTHS:
        entries.append(ZooEntry(f"mobilenet_v1_{width}", "mobilenet_v1",
                                lambda w=width: MobileNetV1(w), 32))
    for groups in SHUFFLENET_STAGE2_CHANNELS:
        for scale in SHUFFLENET_SCALES:
            entries.append(ZooEntry(f"shufflenet_v1_g{groups}_{scale}x", "shufflenet_v1",
                                    lambda g=groups, s=scale: ShuffleNetV1(g, s), 32))
    for scale in SHUFFLENET_V2_CHANNELS:
        entries.append(ZooEntry(f"shufflenet_v2_{scale}x", "shufflenet_v2",
                                lambda s=scale: ShuffleNetV2(s), 32))
    return {entry.name: entry for entry in entries}


ZOO = _zoo()


def model_names() -> list[str]:
    return list(ZOO)


def lookup(name: str) -> ZooEntry:
    """The zoo entry called ``name``, or a BadInputError listing close matches."""
    if name in ZOO:
        return ZOO[name]
    close = difflib.get_close_matches(name, ZOO, n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `tvmshuffle models` lists them"
    raise BadInputError(f"unknown model '{name}'{hint}")


def _init_weights(model: nn.Module) -> None:
    """He-normal convolutions (gain 1 where no ReLU follows), non-trivial BatchNorm statistics
    so that inference-mode BN folding is exercised, and a small scale on the last BN of each
    residual branch, so that activations stay of order one through every network's depth."""
    relu_follows = set()
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            layers = list(seq)
            for i, layer in enumerate(layers):
                if isinstance(layer, nn.Conv2d) and any(
                        isinstance(nxt, nn.ReLU) for nxt in layers[i + 1:i + 3]):
                    relu_follows.add(layer)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            gain = "relu" if m in relu_follows else "linear"
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity=gain)
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.1, 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.8, 1.2)
            nn.init.uniform_(m.bias, -0.1, 0.1)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.8, 1.2)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=(1.0 / m.in_features) ** 0.5)
            nn.init.uniform_(m.bias, -0.1, 0.1)
    for m in model.modules():
        if isinstance(m, ShuffleUnit) and m.stride == 1:
            nn.init.uniform_(m.pw2[1].weight, 0.3, 0.5)


def build(name: str, state_dict: Path | None = None, seed: int = DEFAULT_SEED) -> nn.Module:
    """The zoo model ``name`` in eval mode, with seeded random weights or ``state_dict``."""
    entry = lookup(name)
    torch.manual_seed(seed)
    model = entry.factory()
    _init_weights(model)
    if state_dict is not None:
        try:
            loaded = torch.load(state_dict, map_location="cpu", weights_only=True)
        except FileNotFoundError as err:
            raise BadInputError(f"state_dict file not found: {state_dict}") from err
        except Exception as err:  # noqa: BLE001 - any file: unpickling fails in many ways
            raise BadInputError(f"cannot load state_dict {state_dict}: not a file torch.load "
                                f"reads as weights ({err.__class__.__name__})") from err
        try:
            model.load_state_dict(loaded)
        except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise BadInputError(f"cannot load state_dict {state_dict} into {name}: "
                                f"{first_line(err)}") from err
    return model.eval()


def shape_only(name: str) -> nn.Module:
    """The zoo model ``name`` with no weights (on PyTorch's "meta" device): its structure and
    shapes only, built in milliseconds, for counting (``flops.count_module``)."""
    entry = lookup(name)
    with torch.device("meta"):
        return entry.factory().eval()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
