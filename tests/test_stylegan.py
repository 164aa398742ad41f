"""The StyleGAN's pure parts on the CPU, no Ray: shapes and sizes of the presets, sampling per
seed and truncation, the generator folder (round trip and every refusal), the R1 penalty's
double backward, and the training-state folder that train-gan checkpoints."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cemiray.models.serialization import save_model_folder
from cemiray.models.stylegan import (
    STYLEGAN_PRESETS,
    Discriminator,
    Generator,
    StyleGANPreset,
    check_truncation,
    parameter_count,
    resolve_stylegan_preset,
    sample_gan,
)
from cemiray.models.stylegan_io import GANFolderError, load_gan, save_gan
from cemiray.models.stylegan_training import (
    build_optimizers,
    d_logistic_loss,
    ema_beta,
    g_nonsaturating_loss,
    load_training_state,
    r1_penalty,
    save_training_state,
    update_ema,
)

# 16 px in three levels, for speed; the tests of the shipped presets use them as they are.
TINY = {"image_size": 16, "channels": (32, 16, 8), "z_dim": 32, "w_dim": 32}


def tiny(seed: int = 0, **more) -> Generator:
    torch.manual_seed(seed)
    gen = Generator("compact", **{**TINY, **more})
    with torch.no_grad():  # a trained-looking w̄ and noise strengths (fresh ones are 0)
        gen.mapping.w_avg.normal_()
        for name, p in gen.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.5)
    return gen.eval()


def test_compact_preset_is_one_to_two_million_parameters_at_32_px():
    torch.manual_seed(0)
    gen, disc = Generator("compact"), Discriminator("compact")
    assert (parameter_count(gen), parameter_count(disc)) == (749_427, 871_585)
    assert 1_000_000 <= parameter_count(gen) + parameter_count(disc) <= 2_000_000
    assert parameter_count(gen.mapping) == 2 * (128 * 128 + 128)
    assert gen.num_ws == 8  # 7 convolutions + the last RGB output
    z = torch.randn(5, 128)
    img = gen(z)
    assert img.shape == (5, 3, 32, 32) and torch.isfinite(img).all()
    logits = disc(img)
    assert logits.shape == (5,) and torch.isfinite(logits).all()  # 5: mbstd groups of 1


def test_gpu112_preset_makes_112_px_from_a_7x7_constant():
    preset = STYLEGAN_PRESETS["gpu112"]
    assert preset.resolutions == [7, 14, 28, 56, 112]
    torch.manual_seed(0)
    gen = Generator(preset)
    img = gen(torch.randn(2, 512))
    assert img.shape == (2, 3, 112, 112)
    assert gen.synthesis.blocks[0].const.shape == (512, 7, 7)
    assert Discriminator(preset)(img).shape == (2,)


def test_presets_that_cannot_be_built_are_refused():
    with pytest.raises(ValueError, match="image_size 100 must be base_size 4 doubled 3 times"):
        StyleGANPreset(name="x", image_size=100)
    with pytest.raises(ValueError, match="unknown StyleGAN preset field"):
        resolve_stylegan_preset("compact", z_size=3)
    with pytest.raises(ValueError, match="unknown StyleGAN preset 'huge'"):
        resolve_stylegan_preset("huge")
    assert resolve_stylegan_preset("compact", **TINY).channels == (32, 16, 8)


def test_sampling_is_a_function_of_the_seed_not_of_the_batch():
    gen = tiny()
    for noise_mode in ("const", "random"):
        a = sample_gan(gen, [5, 6, 7], noise_mode=noise_mode)
        b = sample_gan(gen, [7, 5], noise_mode=noise_mode, batch_size=1)
        assert a.shape == (3, 16, 16, 3) and a.dtype == np.uint8
        assert np.abs(a[[2, 0]].astype(int) - b.astype(int)).max() <= 1
        assert np.array_equal(a, sample_gan(gen, [5, 6, 7], noise_mode=noise_mode))
        assert np.abs(a[0].astype(int) - a[1].astype(int)).max() > 10  # seeds differ
    const, random = sample_gan(gen, [5]), sample_gan(gen, [5], noise_mode="random")
    assert not np.array_equal(const, random)  # the noise images take part


def test_truncation_zero_is_the_average_face_for_every_seed():
    gen = tiny()
    images = sample_gan(gen, [1, 2, 3, 4], truncation=0.0)
    with torch.no_grad():
        ws = gen.mapping.w_avg[None, None].repeat(1, gen.num_ws, 1)
        mean_face = gen.synthesis(ws, "const").clamp(-1, 1)
    expected = ((mean_face + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
    for image in images:
        assert np.abs(image.astype(int) - expected[0].astype(int)).max() <= 1
    half = sample_gan(gen, [1, 2], truncation=0.5)
    full = sample_gan(gen, [1, 2], truncation=1.0)
    spread = [np.abs(x[0].astype(int) - x[1].astype(int)).mean() for x in (images[:2], half, full)]
    assert spread[0] <= 1 < spread[1] < spread[2]  # ψ trades diversity for the average


@pytest.mark.parametrize("psi", [-0.1, 1.5, math.nan, True, "0.5", None])
def test_truncation_outside_zero_one_is_refused(psi):
    with pytest.raises(ValueError, match=r"truncation psi must be a number in \[0, 1\]"):
        check_truncation(psi)
    with pytest.raises(ValueError, match="truncation psi"):
        sample_gan(tiny(), [1], truncation=psi)


def test_bad_seeds_are_refused():
    with pytest.raises(ValueError, match="seeds\\[1\\]"):
        sample_gan(tiny(), [1, -2])
    with pytest.raises(ValueError, match="empty"):
        sample_gan(tiny(), [])


def test_folder_round_trip(tmp_path):
    gen = tiny(3)
    torch.manual_seed(1)
    disc = Discriminator(gen.preset)
    url = save_gan(str(tmp_path / "gan"), gen, disc, {"step": 7})
    config = json.loads((tmp_path / "gan" / "config.json").read_text())
    assert config["kind"] == "cemiray-stylegan" and config["preset"]["image_size"] == 16
    loaded, loaded_disc, meta = load_gan(url, discriminator=True)
    assert meta == {"step": 7} and not loaded.training
    for a, b in ((gen, loaded), (disc, loaded_disc)):
        assert a.state_dict().keys() == b.state_dict().keys()
        assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert np.array_equal(sample_gan(gen, [4, 9], 0.7), sample_gan(loaded, [4, 9], 0.7))
    assert load_gan(url)[1] is None


def test_folders_that_are_not_a_stylegan_are_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GANFolderError, match=f"{empty}: not a StyleGAN generator folder "
                                             r"\(no config.json"):
        load_gan(str(empty))
    recognizer = tmp_path / "recognizer"  # a cemiray model folder also has a config.json
    save_model_folder(torch.nn.Linear(2, 2), str(recognizer), {"arch": "linear"})
    with pytest.raises(GANFolderError, match="config.json has kind=None, not 'cemiray-stylegan'"):
        load_gan(str(recognizer))
    url = save_gan(str(tmp_path / "gan"), tiny())
    (tmp_path / "gan" / "generator.safetensors").unlink()
    with pytest.raises(GANFolderError, match="generator.safetensors is missing"):
        load_gan(url)
    (tmp_path / "gan" / "generator.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(GANFolderError, match="not a valid safetensors file"):
        load_gan(url)


def test_missing_or_mismatched_weights_are_refused_naming_the_tensor(tmp_path):
    url = save_gan(str(tmp_path / "gan"), tiny())
    weights = tmp_path / "gan" / "generator.safetensors"
    tensors = load_file(weights)
    key = "synthesis.blocks.1.conv0.weight"
    save_file({k: v for k, v in tensors.items() if k != key}, weights)
    with pytest.raises(GANFolderError, match=f"{weights}: tensor '{key}' is missing"):
        load_gan(url)
    save_file({**tensors, key: tensors[key][:, :3].contiguous()}, weights)
    with pytest.raises(GANFolderError, match=rf"tensor '{key}' has shape \(16, 3, 3, 3\), the "
                                             r"architecture needs \(16, 32, 3, 3\)"):
        load_gan(url)
    save_file({**tensors, "extra.weight": torch.zeros(1)}, weights)
    with pytest.raises(GANFolderError, match="unexpected tensor 'extra.weight'"):
        load_gan(url)
    save_file({**tensors, key: tensors[key] * math.inf}, weights)
    with pytest.raises(GANFolderError, match=f"tensor '{key}' holds non-finite values"):
        load_gan(url)
    # weights of another architecture under this config
    save_file({k: v.contiguous() for k, v in Generator("compact").state_dict().items()}, weights)
    with pytest.raises(GANFolderError, match="unexpected tensor 'synthesis.blocks.3.* do not "
                                             "belong to this architecture"):
        load_gan(url)


def test_r1_penalty_is_nonzero_and_its_gradient_reaches_every_layer():
    torch.manual_seed(0)
    disc = Discriminator("compact", **TINY)
    real = torch.rand(4, 3, 16, 16) * 2 - 1
    penalty, logits = r1_penalty(disc, real)
    assert penalty.item() > 0 and logits.shape == (4,)
    penalty.backward()  # the double backward
    for name, p in disc.named_parameters():
        if name.endswith(".weight") and name != "out.weight":  # D's last layer is linear
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert disc.out.weight.grad.abs().sum() > 0  # ∇ₓD scales with it
    # the penalty is ‖∇ₓD(x)‖²: a first-order gradient check on one input
    x = real[:1].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(disc(x).sum(), x)
    assert torch.isclose(r1_penalty(disc, real[:1])[0], grad.square().sum(), rtol=1e-4)


def test_losses_and_ema():
    zero = torch.zeros(3)
    assert math.isclose(g_nonsaturating_loss(zero).item(), math.log(2), rel_tol=1e-6)
    assert math.isclose(d_logistic_loss(zero, zero).item(), 2 * math.log(2), rel_tol=1e-6)
    assert d_logistic_loss(torch.full((3,), 5.0), torch.full((3,), -5.0)) < 0.02
    assert ema_beta(64, 0, 10.0, 0.05) == 0.0  # at the start the EMA is the model
    assert math.isclose(ema_beta(64, 10**7, 10.0, 0.05), 0.5 ** (64 / 10_000))
    ema, model = tiny(0), tiny(1)
    update_ema(ema, model, 0.25)
    p_ema, p0, p1 = (dict(m.named_parameters())["mapping.layers.0.weight"]
                     for m in (ema, tiny(0), model))
    assert torch.allclose(p_ema, 0.25 * p0 + 0.75 * p1)
    assert torch.equal(ema.mapping.w_avg, model.mapping.w_avg)  # buffers are copied


def training_state(seed: int, **preset):
    gen = tiny(seed, **preset)
    torch.manual_seed(seed)
    disc, ema = Discriminator(gen.preset), tiny(seed + 1, **preset)
    opt_g, opt_d = build_optimizers(gen, disc, 0.002, 16)
    for opt, net in ((opt_g, gen), (opt_d, disc)):  # give Adam moments
        sum(p.square().sum() for p in net.parameters()).backward()
        opt.step()
    return ({"generator": gen, "discriminator": disc, "generator_ema": ema},
            {"G": opt_g, "D": opt_d})


def test_training_state_round_trip_and_refusals(tmp_path):
    nets, opts = training_state(0)
    folder = str(tmp_path / "ckpt")
    save_training_state(folder, nets, opts, {"step": 12, "images_seen": 768})
    assert not any(p.suffix in (".pt", ".pth", ".pkl") for p in (tmp_path / "ckpt").iterdir())
    fresh, fresh_opts = training_state(5)
    record = load_training_state(folder, fresh, fresh_opts)
    assert (record["step"], record["images_seen"]) == (12, 768)
    for name in nets:
        a, b = nets[name].state_dict(), fresh[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    for key in opts:
        a, b = opts[key].state_dict(), fresh_opts[key].state_dict()
        assert a["param_groups"] == [{**g, "betas": tuple(g["betas"])} for g in b["param_groups"]]
        assert all(torch.equal(a["state"][i]["exp_avg_sq"], b["state"][i]["exp_avg_sq"])
                   for i in a["state"])

    other, other_opts = training_state(1, channels=(32, 16, 16))
    before = {k: v.clone() for k, v in other["generator"].state_dict().items()}
    with pytest.raises(GANFolderError, match="trained another architecture"):
        load_training_state(folder, other, other_opts, "resume_from")
    moments = load_file(tmp_path / "ckpt" / "optimizer_D.safetensors")
    moments["0.exp_avg"] = moments["0.exp_avg"][:1]
    save_file(moments, tmp_path / "ckpt" / "optimizer_D.safetensors")
    target, target_opts = training_state(2)
    snapshot = {k: v.clone() for k, v in target["generator"].state_dict().items()}
    with pytest.raises(GANFolderError, match=r"optimizer_D.safetensors: tensor '0.exp_avg' has "
                                             r"shape \(1,"):
        load_training_state(folder, target, target_opts, "resume_from")
    # a refused folder changed nothing
    assert all(torch.equal(snapshot[k], target["generator"].state_dict()[k]) for k in snapshot)
    assert all(torch.equal(before[k], other["generator"].state_dict()[k]) for k in before)
    (tmp_path / "ckpt" / "gan_state.json").unlink()
    with pytest.raises(GANFolderError, match="not a train-gan checkpoint"):
        load_training_state(folder, target, target_opts, "resume_from")
