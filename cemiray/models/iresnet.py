"""IResNet backbones (models) whose state dicts match arcface_torch's key for key.

IResNet backbones (IR-18/34/50/100) whose state dicts match insightface arcface_torch's
`backbones/iresnet.py` key for key, so `backbone.pth` files trained there load unchanged.

The input size is a constructor argument (16-112 px, square): the stem keeps the resolution and
each of the four stages halves it (rounding up), so 112 px ends at 7x7 as in arcface_torch and
16 px at 1x1; the size of `fc` follows from it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}
STAGE_WIDTHS = (64, 128, 256, 512)
MIN_INPUT_SIZE = 16
MAX_INPUT_SIZE = 112
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def final_map_size(input_size: int) -> int:
    """Side of the last feature map: four stride-2 3x3 convolutions with padding 1."""
    size = input_size
    for _ in STAGE_WIDTHS:
        size = (size + 1) // 2
    return size


class IBasicBlock(nn.Module):
    """Pre-activation residual block: BN, 3x3 conv, BN, PReLU, 3x3 conv (strided), BN."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, eps=1e-5)
        self.prelu = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels, eps=1e-5)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels, eps=1e-5),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """Face embedding network: 3x112x112 (or any square 16-112) RGB in [-1, 1] -> features.

    The convolutional trunk may run under autocast (`dtype="bfloat16"`, CPU or GPU); `fc` and
    the final BatchNorm1d always run in float32, as arcface_torch does with fp16.
    """

    def __init__(
        self,
        name: str,
        layers: tuple[int, int, int, int],
        input_size: int = 112,
        num_features: int = 512,
        dropout: float = 0.0,
        dtype: str = "float32",
        width: int = 64,
    ) -> None:
        super().__init__()
        if not MIN_INPUT_SIZE <= input_size <= MAX_INPUT_SIZE:
            raise ValueError(
                f"input_size={input_size}: IResNet takes {MIN_INPUT_SIZE}-{MAX_INPUT_SIZE} px"
            )
        if width < 4:
            raise ValueError(f"width={width}: the first stage needs at least 4 channels")
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}: choose one of {sorted(DTYPES)}")
        self.config: dict[str, Any] = {
            "name": name,
            "input_size": int(input_size),
            "num_features": int(num_features),
            "dropout": float(dropout),
            "dtype": dtype,
        }
        if width != STAGE_WIDTHS[0]:
            self.config["width"] = int(width)
        widths = tuple(width * (2**i) for i in range(len(STAGE_WIDTHS)))
        self.input_size = int(input_size)
        self.num_features = int(num_features)
        self.compute_dtype = DTYPES[dtype]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
        self.prelu = nn.PReLU(widths[0])
        in_channels = widths[0]
        for index, (channels, blocks) in enumerate(zip(widths, layers, strict=True), start=1):
            stage = [IBasicBlock(in_channels, channels, stride=2)]
            stage += [IBasicBlock(channels, channels, stride=1) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*stage))
            in_channels = channels
        side = final_map_size(self.input_size)
        self.bn2 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_channels * side * side, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.ones_(self.features.weight)
        # A BatchNorm without a learnt scale on the embedding, as arcface_torch trains it.
        self.features.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"{self.config['name']} expects N x 3 x {self.input_size} x {self.input_size}, "
                f"got {tuple(x.shape)}"
            )
        use_autocast = self.compute_dtype != torch.float32
        with torch.autocast(x.device.type, dtype=self.compute_dtype, enabled=use_autocast):
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = self.dropout(torch.flatten(self.bn2(x), 1))
        x = self.fc(x.float())
        return self.features(x)


def get_backbone(name: str, **kwargs: Any) -> IResNet:
    """Build a backbone by name: iresnet18, iresnet34, iresnet50, iresnet100.

    kwargs: input_size (16-112), num_features, dropout, dtype ("float32" or "bfloat16"), width
    (channels of the first stage, 64 as in arcface_torch; the stages double it. A narrower
    network keeps the key names and suits small inputs and CPU budgets).
    """
    if name not in LAYERS:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(LAYERS)}")
    return IResNet(name, LAYERS[name], **kwargs)
