"""The condition encoder (tokens, pooled vector, variation tokens with dropout) and the presets
that pair it with a UNet, including the paper preset's cost per step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cemiray.diffusion import (
    CemiConditionEncoder,
    build_generator,
    resolve_preset,
)


def unit(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_tokens_and_pooled_depend_on_identity_and_m():
    torch.manual_seed(0)
    enc = CemiConditionEncoder(
        id_dim=32, cross_attention_dim=16, num_tokens=3, sim_dim=8, hidden_dim=24, pooled_dim=12
    ).eval()
    ids = unit(5, 32)
    out = enc(ids, torch.zeros(5))
    assert out.tokens.shape == (5, 3, 16) and out.pooled.shape == (5, 12)
    assert enc.num_condition_tokens == 3
    other_m = enc(ids, torch.full((5,), 0.8))
    assert not torch.allclose(out.tokens, other_m.tokens)
    assert not torch.allclose(out.pooled, other_m.pooled)
    other_id = enc(unit(5, 32, seed=1), torch.zeros(5))
    assert not torch.allclose(out.tokens, other_id.tokens)
    # Each sample's condition depends on that sample only.
    single = enc(ids[2:3], torch.zeros(1))
    torch.testing.assert_close(single.tokens[0], out.tokens[2], atol=1e-5, rtol=0)

    no_pool = CemiConditionEncoder(id_dim=32, cross_attention_dim=16, pooled_dim=None)
    assert no_pool(ids, torch.zeros(5)).pooled is None
    with pytest.raises(ValueError, match="id_embeddings"):
        enc(unit(5, 31), torch.zeros(5))
    with pytest.raises(ValueError, match="similarity"):
        enc(ids, torch.zeros(4))


def variation_encoder(route="tokens", **kw):
    torch.manual_seed(0)
    enc = CemiConditionEncoder(id_dim=32, cross_attention_dim=16, num_tokens=2, hidden_dim=24,
                               pooled_dim=8, num_variation_attrs=5, num_variation_tokens=2,
                               variation_route=route, **kw)
    with torch.no_grad():  # as if trained: the output layer starts at zero
        enc.variation_out.weight.normal_(0, 0.5)
        enc.variation_out.bias.normal_(0, 0.5)
    return enc


def test_an_untrained_variation_condition_changes_nothing():
    """Zero-initialised: a generator fine-tuned with variation starts where it was."""
    for route in ("tokens", "pooled", "both"):
        enc = CemiConditionEncoder(id_dim=32, cross_attention_dim=16, num_tokens=2,
                                   hidden_dim=24, pooled_dim=8, num_variation_attrs=3,
                                   variation_route=route).eval()
        ids, m = unit(4, 32), torch.zeros(4)
        given = enc(ids, m, variation=torch.randn(4, 3))
        plain = enc(ids, m)
        torch.testing.assert_close(given.tokens, plain.tokens)
        torch.testing.assert_close(given.pooled, plain.pooled)
        if route != "pooled":
            assert given.tokens.shape == (4, 3, 16) and not given.tokens[:, 2:].any()


def test_variation_routes_masking_and_dropout():
    n = 400
    ids, m = unit(n, 32), torch.zeros(n)
    attrs = torch.rand(n, 5, generator=torch.Generator().manual_seed(1))

    tokens_only = variation_encoder("tokens").eval()
    assert tokens_only.num_condition_tokens == 4
    out, plain = tokens_only(ids, m, variation=attrs), tokens_only(ids, m)
    torch.testing.assert_close(out.pooled, plain.pooled)
    assert not torch.isclose(out.tokens[:, 2:], plain.tokens[:, 2:]).all(dim=(1, 2)).any()

    pooled_only = variation_encoder("pooled").eval()
    assert pooled_only.num_condition_tokens == 2
    out, plain = pooled_only(ids, m, variation=attrs), pooled_only(ids, m)
    torch.testing.assert_close(out.tokens, plain.tokens)
    assert not torch.isclose(out.pooled, plain.pooled).all(dim=1).any()

    enc = variation_encoder("both", variation_attr_dropout_prob=0.5).eval()
    # NaN is "unspecified": all-NaN equals no variation
    torch.testing.assert_close(enc(ids, m, variation=torch.full((n, 5), float("nan"))).tokens,
                               enc(ids, m).tokens)
    partial = attrs.clone()
    partial[:, 3] = float("nan")
    changed = attrs.clone()
    changed[:, 3] = 0.123  # a given value matters, an unspecified one is masked
    assert not torch.allclose(enc(ids, m, variation=changed).pooled,
                              enc(ids, m, variation=attrs).pooled)
    assert not torch.allclose(enc(ids, m, variation=partial).pooled,
                              enc(ids, m, variation=attrs).pooled)

    enc.train()  # per-attribute dropout: like masking that attribute, reproducible per seed
    g = torch.Generator().manual_seed(2)
    dropped = enc(ids, m, variation=attrs, generator=g).pooled
    again = enc(ids, m, variation=attrs, generator=torch.Generator().manual_seed(2)).pooled
    assert torch.equal(dropped, again)
    enc.eval()
    full = enc(ids, m, variation=attrs).pooled
    untouched = torch.isclose(dropped, full).all(dim=1)
    assert 0 < int(untouched.sum()) < 40  # all five kept: 0.5**5 of 400 = 12.5

    whole = variation_encoder("tokens", variation_dropout_prob=1.0).train()
    torch.testing.assert_close(whole(ids, m, variation=attrs).tokens,
                               whole.eval()(ids, m).tokens)

    with pytest.raises(ValueError, match="variation must be"):
        enc(ids, m, variation=attrs[:, :4])
    with pytest.raises(ValueError, match="inf"):
        enc(ids, m, variation=torch.full((n, 5), float("inf")))
    plain_enc = CemiConditionEncoder(id_dim=32, cross_attention_dim=16)
    with pytest.raises(ValueError, match="num_variation_attrs=0"):
        plain_enc(ids, m, variation=attrs)
    with pytest.raises(ValueError, match="variation_route"):
        CemiConditionEncoder(num_variation_attrs=2, variation_route="sideways")
    with pytest.raises(ValueError, match="pooled_dim is None"):
        CemiConditionEncoder(num_variation_attrs=2, variation_route="pooled", pooled_dim=None)


def test_identity_dropout_uses_the_learned_null_identity():
    enc = CemiConditionEncoder(
        id_dim=32, cross_attention_dim=16, hidden_dim=24, pooled_dim=8, id_dropout_prob=1.0
    ).train()
    a = enc(unit(3, 32, 0), torch.zeros(3), generator=torch.Generator().manual_seed(0))
    b = enc(unit(3, 32, 1), torch.zeros(3), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.tokens, b.tokens)
    enc.eval()
    assert not torch.allclose(
        enc(unit(3, 32, 0), torch.zeros(3)).tokens, enc(unit(3, 32, 1), torch.zeros(3)).tokens
    )


def test_encoder_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    enc = CemiConditionEncoder(
        id_dim=32,
        cross_attention_dim=16,
        hidden_dim=24,
        pooled_dim=8,
        num_variation_attrs=3,
        variation_dropout_prob=0.2,
    ).eval()
    enc.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file()
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = CemiConditionEncoder.from_pretrained(tmp_path).eval()
    assert loaded.config.num_variation_attrs == 3 and loaded.config.variation_dropout_prob == 0.2
    ids, m, attrs = unit(4, 32), torch.linspace(-1, 1, 4), torch.rand(4, 3)
    assert torch.equal(enc(ids, m, attrs).tokens, loaded(ids, m, attrs).tokens)
    assert torch.equal(enc(ids, m, attrs).pooled, loaded(ids, m, attrs).pooled)


def test_presets_pair_unet_and_encoder():
    tiny = resolve_preset("tiny")
    kwargs = tiny.unet_kwargs()
    assert kwargs["sample_size"] == 32
    assert kwargs["down_block_types"] == ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D")
    assert kwargs["up_block_types"] == ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    paper = resolve_preset("paper").unet_kwargs()
    assert paper["block_out_channels"] == (128, 128, 256, 256, 512, 512)
    assert [b.startswith("CrossAttn") for b in paper["down_block_types"]] == [
        False,
        False,
        False,
        False,
        True,
        False,
    ]
    assert paper["resnet_time_scale_shift"] == "scale_shift"

    torch.manual_seed(0)
    unet, enc = build_generator("tiny")
    ids = unit(16, 512)
    cond = enc(ids, torch.zeros(16))
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = unet(
            x, torch.tensor(999), encoder_hidden_states=cond.tokens, class_labels=cond.pooled
        ).sample
    assert out.shape == (16, 3, 32, 32)
    # the CPU preset's cost is its FLOPs (≈ 0.53 GFLOP per image and step with attention only at
    # the coarse grids); attention at the full 32² grid would multiply it
    gflop_per_image = counter.get_total_flops() / 16 / 1e9
    assert 0.3 < gflop_per_image < 0.8, gflop_per_image

    no_route = resolve_preset("tiny", timestep_condition=False)
    assert no_route.unet_kwargs()["class_embed_type"] is None
    assert no_route.encoder_kwargs()["pooled_dim"] is None
    with pytest.raises(ValueError, match="unknown generator preset"):
        resolve_preset("huge")
    with pytest.raises(ValueError, match="unknown preset field"):
        resolve_preset("tiny", block_channels=(8, 16))
    with pytest.raises(ValueError, match="attention_levels"):
        resolve_preset("tiny", block_out_channels=(8, 16))
    with pytest.raises(ValueError, match="prediction_type"):
        resolve_preset("tiny", prediction_type="sample")


def test_paper_preset_costs_about_65_gflop_per_image_step():
    with torch.device("meta"):
        unet, enc = build_generator("paper")
        ids = torch.randn(1, 512)
        x = torch.randn(1, 3, 112, 112)
        t = torch.tensor([500])
    counter = FlopCounterMode(display=False)
    with counter:
        cond = enc(ids, torch.zeros(1, device="meta"))
        out = unet(x, t, encoder_hidden_states=cond.tokens, class_labels=cond.pooled).sample
    assert out.shape == (1, 3, 112, 112)
    flops = counter.get_total_flops()
    assert abs(flops - 65e9) <= 0.35 * 65e9, flops / 1e9
    params = sum(p.numel() for p in unet.parameters())
    assert 50e6 < params < 200e6, params
