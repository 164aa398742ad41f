"""Weight files (folders, .pth, .onnx) and the Recognizer interface, on real files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cemiray.data import storage
from cemiray.models import (
    CheckpointError,
    OnnxRecognizer,
    TorchRecognizer,
    UnsafeCheckpointError,
    align_face,
    get_backbone,
    load_model_folder,
    load_recognizer,
    load_torch_state_dict,
    save_model_folder,
)


def tiny_backbone(input_size: int = 16, num_features: int = 32, seed: int = 0):
    """A small iresnet18 with non-trivial BatchNorm statistics, so eval-mode handling shows."""
    torch.manual_seed(seed)
    model = get_backbone("iresnet18", input_size=input_size, num_features=num_features)
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight)
    return model.eval()


def reference_embeddings(model, images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        return F.normalize(model(x), dim=1).numpy()


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("root", ["local", "memory://cemiray-test-models"])
def test_model_folder_round_trip(tmp_path: Path, root: str) -> None:
    url = str(tmp_path / "r18") if root == "local" else f"{root}/r18"
    model = tiny_backbone()
    save_model_folder(model, url, model.config)
    state, config = load_model_folder(url)
    assert config == model.config
    assert sorted(state) == sorted(model.state_dict())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())

    recognizer = load_recognizer(url)
    assert isinstance(recognizer, TorchRecognizer)
    assert (recognizer.input_size, recognizer.dim) == (16, 32)
    # the model hash (cemiray.models.hashing) of a folder: SHA-256 of its `sha256sum` lines
    lines = "".join(f"{hashlib.sha256(storage.read_bytes(storage.join(url, name))).hexdigest()}"
                    f"  {name}\n" for name in ("config.json", "model.safetensors"))
    assert recognizer.content_hash == hashlib.sha256(lines.encode()).hexdigest()
    images = random_images(5, 16)
    embeddings = recognizer.embed(images, batch_size=2)
    assert embeddings.shape == (5, 32) and embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, reference_embeddings(model, images), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_embed_resizes_and_accepts_normalised_tensors() -> None:
    model = tiny_backbone()
    recognizer = TorchRecognizer(model, "test", input_size=16, dim=32)
    big = random_images(3, 32)
    from_uint8 = recognizer.embed(big)
    tensor = torch.from_numpy(big).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    np.testing.assert_allclose(recognizer.embed(tensor), from_uint8, atol=1e-5)
    resized = F.interpolate(tensor, size=(16, 16), mode="bilinear", antialias=True)
    with torch.no_grad():
        expected = F.normalize(model(resized), dim=1).numpy()
    np.testing.assert_allclose(from_uint8, expected, atol=1e-5)
    with pytest.raises(TypeError, match="uint8"):
        recognizer.embed(big.astype(np.float32))
    with pytest.raises(ValueError, match="N x H x W x 3"):
        recognizer.embed(big[0])


def test_embed_tensor_is_differentiable_and_frozen() -> None:
    recognizer = TorchRecognizer(tiny_backbone(), "test", input_size=16, dim=32)
    x = (torch.rand(2, 3, 24, 24) * 2 - 1).requires_grad_(True)
    out = recognizer.embed_tensor(x)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    (out[0] @ out[1]).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in recognizer.model.parameters())
    assert not recognizer.model.training


def test_pth_state_dict_with_arch(tmp_path: Path) -> None:
    model = tiny_backbone(input_size=32, num_features=48)
    path = tmp_path / "backbone.pth"
    torch.save(model.state_dict(), path)
    state = load_torch_state_dict(str(path))
    assert list(state) == list(model.state_dict())
    options = "input_size=32&num_features=48"
    for uri, kwargs in [
        (f"{path}?arch=iresnet18&{options}", {}),
        (str(path), {"arch": "iresnet18", "input_size": 32, "num_features": 48}),
    ]:
        recognizer = load_recognizer(uri, **kwargs)
        assert (recognizer.input_size, recognizer.dim) == (32, 48)
        assert recognizer.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
        images = random_images(2, 32)
        np.testing.assert_allclose(
            recognizer.embed(images), reference_embeddings(model, images), atol=1e-5
        )
    with pytest.raises(ValueError, match="needs its architecture"):
        load_recognizer(str(path))
    with pytest.raises(CheckpointError, match="backbone.pth: weights do not fit"):
        load_recognizer(f"{path}?arch=iresnet18")  # default 112 px: fc has another shape
    with pytest.raises(ValueError, match="conflicts"):
        load_recognizer(f"{path}?arch=iresnet18", arch="iresnet50")
    with pytest.raises(ValueError, match="unknown options"):
        load_recognizer(f"{path}?arch=iresnet18&colour=blue")


def test_pickled_code_checkpoint_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": RunsCode()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pth: refused.*system"):
        load_torch_state_dict(str(path))
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pth"):
        load_recognizer(f"{path}?arch=iresnet18")
    assert not marker.exists()


def test_corrupt_and_missing_files_have_clear_errors(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(CheckpointError, match=r"corrupt\.pth: not a readable torch checkpoint"):
        load_torch_state_dict(str(corrupt))
    not_a_state_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_state_dict)
    with pytest.raises(CheckpointError, match=r"list\.pth: expected a state dict"):
        load_torch_state_dict(str(not_a_state_dict))

    folder = tmp_path / "folder"
    model = tiny_backbone()
    save_model_folder(model, str(folder), model.config)
    (folder / "model.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a valid safetensors"):
        load_model_folder(str(folder))
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json: missing"):
        load_model_folder(str(folder))

    for missing in ("nothing.onnx", "nothing.pth?arch=iresnet50", "no_folder"):
        with pytest.raises(FileNotFoundError, match="nothing|no_folder"):
            load_recognizer(str(tmp_path / missing))


def export_onnx(model, path: Path) -> None:
    torch.onnx.export(
        model,
        torch.zeros(1, 3, 112, 112),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["embedding"],
        dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
    )


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_onnx_recognizer_matches_torch(tmp_path: Path) -> None:
    model = tiny_backbone(input_size=112, num_features=64, seed=1)
    path = tmp_path / "r18.onnx"
    export_onnx(model, path)
    recognizer = load_recognizer(str(path))
    assert isinstance(recognizer, OnnxRecognizer)
    assert (recognizer.input_size, recognizer.dim) == (112, 64)
    assert recognizer.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    face = face_image_112()
    images = np.concatenate([face[None], random_images(3, 112, seed=5)])
    reference = reference_embeddings(model, images)
    onnx_embeddings = recognizer.embed(images)
    cosines = np.sum(onnx_embeddings * reference, axis=1)
    assert cosines.min() > 1 - 1e-3, cosines
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    assert np.sum(recognizer.embed_tensor(tensor).numpy() * reference, axis=1).min() > 1 - 1e-3
    with pytest.raises(TypeError, match="not differentiable"):
        recognizer.embed_tensor(tensor.requires_grad_(True))
    # RGB order matters: swapping channels changes the embedding of a real face
    swapped = recognizer.embed(np.ascontiguousarray(face[None, :, :, ::-1]))
    assert float(swapped[0] @ reference[0]) < 1 - 1e-3

    in_memory = "memory://cemiray-test-onnx/r18.onnx"
    storage.atomic_write_bytes(in_memory, path.read_bytes())
    np.testing.assert_allclose(load_recognizer(in_memory).embed(images), onnx_embeddings, atol=1e-6)


def face_image_112() -> np.ndarray:
    """The (colour) face of scikit-image's astronaut photograph, 112 x 112."""
    from PIL import Image
    from skimage.data import astronaut

    crop = Image.fromarray(astronaut()[20:240, 150:370])
    return np.asarray(crop.resize((112, 112)), dtype=np.uint8)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # scikit-image deprecation inside insightface
def test_align_face_identity_warp_keeps_rgb() -> None:
    from insightface.utils.face_align import arcface_dst

    rng = np.random.default_rng(0)
    image = np.zeros((112, 112, 3), dtype=np.uint8)
    image[..., 0] = np.arange(112, dtype=np.uint8)[None, :] * 2  # red ramp
    image[..., 2] = 200  # constant blue
    image[..., 1] = rng.integers(0, 50, (112, 112))
    aligned = align_face(image, arcface_dst, size=112)
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
    assert np.abs(aligned[4:-4, 4:-4].astype(int) - image[4:-4, 4:-4]).max() <= 1
    # landmarks of a face twice as large land on the same template
    doubled = np.kron(image, np.ones((2, 2, 1), dtype=np.uint8))
    aligned2 = align_face(doubled, arcface_dst * 2, size=112)
    assert np.abs(aligned2[4:-4, 4:-4].astype(int) - image[4:-4, 4:-4]).mean() < 2
    with pytest.raises(ValueError, match="5 x 2"):
        align_face(image, arcface_dst[:4])
