"""IResNet: arcface_torch state-dict compatibility, input sizes, precision options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cemiray.models.iresnet import get_backbone

ARCFACE_LAYERS = {
    "iresnet18": [2, 2, 2, 2],
    "iresnet34": [3, 4, 6, 3],
    "iresnet50": [3, 4, 14, 3],
    "iresnet100": [3, 13, 30, 3],
}


def batchnorm_entries(prefix: str, channels: int) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (f"{prefix}.{name}", (channels,))
        for name in ("weight", "bias", "running_mean", "running_var")
    ] + [(f"{prefix}.num_batches_tracked", ())]


def arcface_torch_keys(layers: list[int], fc_side: int = 7) -> list[tuple[str, tuple[int, ...]]]:
    """Key names and shapes of arcface_torch's IResNet state dict, in registration order, from
    the architecture description: a 3x3 stem, four stages of IBasicBlocks (64, 128, 256, 512
    channels, the first block of each stage strided with a 1x1 conv + BN shortcut), BN,
    dropout, fc and a BatchNorm1d on the features."""
    keys = [("conv1.weight", (64, 3, 3, 3))] + batchnorm_entries("bn1", 64)
    keys.append(("prelu.weight", (64,)))
    in_channels = 64
    widths = [64, 128, 256, 512]
    for stage, (channels, blocks) in enumerate(zip(widths, layers, strict=True), start=1):
        for block in range(blocks):
            p = f"layer{stage}.{block}"
            keys += batchnorm_entries(f"{p}.bn1", in_channels)
            keys.append((f"{p}.conv1.weight", (channels, in_channels, 3, 3)))
            keys += batchnorm_entries(f"{p}.bn2", channels)
            keys.append((f"{p}.prelu.weight", (channels,)))
            keys.append((f"{p}.conv2.weight", (channels, channels, 3, 3)))
            keys += batchnorm_entries(f"{p}.bn3", channels)
            if block == 0:
                keys.append((f"{p}.downsample.0.weight", (channels, in_channels, 1, 1)))
                keys += batchnorm_entries(f"{p}.downsample.1", channels)
            in_channels = channels
    keys += batchnorm_entries("bn2", 512)
    keys += [("fc.weight", (512, 512 * fc_side * fc_side)), ("fc.bias", (512,))]
    keys += batchnorm_entries("features", 512)
    return keys


@pytest.mark.parametrize("name", sorted(ARCFACE_LAYERS))
def test_state_dict_keys_and_shapes_match_arcface_torch(name: str) -> None:
    with torch.device("meta"):
        model = get_backbone(name)
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == arcface_torch_keys(ARCFACE_LAYERS[name])


def distinct_state_dict(entries: list[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """A constant tensor per key, each constant different, so a misplaced tensor shows."""
    state = {}
    for index, (key, shape) in enumerate(entries):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(index)
        else:
            state[key] = torch.full(shape, 0.5 + index * 1e-3)
    return state


def test_arcface_iresnet50_state_dict_loads_strict() -> None:
    state = distinct_state_dict(arcface_torch_keys(ARCFACE_LAYERS["iresnet50"]))
    model = get_backbone("iresnet50")
    model.load_state_dict(state, strict=True)
    loaded = model.state_dict()
    assert list(loaded) == list(state)
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


def test_mismatched_state_dict_is_refused() -> None:
    state = distinct_state_dict(arcface_torch_keys(ARCFACE_LAYERS["iresnet50"]))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        get_backbone("iresnet34").load_state_dict(state, strict=True)


@pytest.mark.parametrize(
    ("name", "size", "side"),
    [
        ("iresnet50", 16, 1),
        ("iresnet50", 32, 2),
        ("iresnet18", 112, 7),
        ("iresnet18", 20, 2),
        ("iresnet18", 50, 4),
    ],
)
def test_forward_at_input_sizes(name: str, size: int, side: int) -> None:
    torch.manual_seed(0)
    model = get_backbone(name, input_size=size, num_features=128).eval()
    assert model.fc.in_features == 512 * side * side
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 128)
    assert torch.isfinite(out).all()
    assert model.config == {
        "name": name,
        "input_size": size,
        "num_features": 128,
        "dropout": 0.0,
        "dtype": "float32",
    }


def test_training_step_updates_and_features_scale_frozen() -> None:
    torch.manual_seed(0)
    model = get_backbone("iresnet18", input_size=16, num_features=32, dropout=0.2).train()
    out = model(torch.randn(4, 3, 16, 16))
    out.pow(2).mean().backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
    assert model.features.weight.grad is None


def test_bfloat16_autocast_matches_float32() -> None:
    torch.manual_seed(0)
    full = get_backbone("iresnet18", input_size=16, num_features=64).eval()
    half = get_backbone("iresnet18", input_size=16, num_features=64, dtype="bfloat16").eval()
    half.load_state_dict(full.state_dict())
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        a, b = full(x), half(x)
    assert b.dtype == torch.float32
    assert F.cosine_similarity(a, b).min() > 0.98


def test_bad_arguments_have_clear_errors() -> None:
    with pytest.raises(ValueError, match="iresnet18, iresnet34, iresnet50, iresnet100"):
        get_backbone("resnet50")
    with pytest.raises(ValueError, match="16-112"):
        get_backbone("iresnet18", input_size=8)
    with pytest.raises(ValueError, match="dtype"):
        get_backbone("iresnet18", dtype="int8")
    model = get_backbone("iresnet18", input_size=16)
    with pytest.raises(ValueError, match="N x 3 x 16 x 16"):
        model(torch.randn(1, 3, 32, 32))
