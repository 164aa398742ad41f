"""CemiFacePipeline: saving and loading, per-seed determinism, input validation before compute,
measured similarity, and the closed loop that re-draws images off target."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY
from torch import nn

from cemiray.diffusion import (
    SCHEDULERS,
    CemiFacePipeline,
    build_generator,
    build_sample_scheduler,
    closed_loop_generate,
    identity_embeddings_from_images,
    load_pipeline,
    save_pipeline,
)


class TinyRecognizer(nn.Module):
    """A frozen stand-in E_id: conv + linear, unit-norm output."""

    def __init__(self, dim: int = 32, size: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * (size // 2) ** 2, dim)
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc(F.relu(self.conv(x)).flatten(1)), dim=1)


def make_pipeline(seed: int = 0, **overrides) -> CemiFacePipeline:
    torch.manual_seed(seed)
    kwargs = {**TINY, **overrides}
    unet, encoder = build_generator("tiny", **kwargs)
    if encoder.variation_out is not None:  # as if trained: the variation layer starts at zero
        with torch.no_grad():
            encoder.variation_out.weight.normal_(0, 0.5)
    return CemiFacePipeline(
        unet=unet.eval(),
        condition_encoder=encoder.eval(),
        scheduler=build_sample_scheduler("tiny", **kwargs),
    )


def unit(n: int, d: int = 32, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.fixture(scope="module")
def pipe() -> CemiFacePipeline:
    return make_pipeline()


@pytest.fixture(scope="module")
def recognizer() -> TinyRecognizer:
    torch.manual_seed(1)
    return TinyRecognizer()


def test_round_trip_in_a_fresh_process_gives_identical_samples(pipe, tmp_path):
    ids = unit(3)
    expected = pipe(ids, [0.0, 0.5, -0.3], [11, 12, 13], num_inference_steps=2).images
    assert expected.dtype == np.uint8 and expected.shape == (3, 16, 16, 3)

    folder = tmp_path / "generator"
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["condition_encoder"] == [
        "cemiray.diffusion.condition_encoder",
        "CemiConditionEncoder",
    ]
    for sub in ("unet", "condition_encoder"):
        assert (folder / sub / "config.json").is_file()
        assert (folder / sub / "diffusion_pytorch_model.safetensors").is_file()
    assert (folder / "scheduler" / "scheduler_config.json").is_file()

    torch.save(ids, tmp_path / "ids.pt")
    script = textwrap.dedent(f"""
        import numpy as np, torch
        from cemiray.diffusion.pipeline import CemiFacePipeline
        pipe = CemiFacePipeline.from_pretrained({str(folder)!r})
        ids = torch.load({str(tmp_path / "ids.pt")!r}, weights_only=True)
        out = pipe(ids, [0.0, 0.5, -0.3], [11, 12, 13], num_inference_steps=2)
        np.save({str(tmp_path / "fresh.npy")!r}, out.images)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "fresh.npy"), expected)

    save_pipeline(pipe, "memory://cemiface-test/generator")
    from_memory = load_pipeline("memory://cemiface-test/generator")
    again = from_memory(ids, [0.0, 0.5, -0.3], [11, 12, 13], num_inference_steps=2).images
    np.testing.assert_array_equal(again, expected)
    with pytest.raises(OSError, match="model_index.json"):
        load_pipeline(str(tmp_path / "missing"))


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_a_seed_gives_the_same_image_alone_or_in_a_batch(pipe, scheduler):
    ids = unit(4, seed=2)
    kw = {"num_inference_steps": 2, "scheduler": scheduler, "output_type": "pt"}
    batch = pipe(ids, 0.2, [5, 6, 7, 8], **kw).images
    alone = pipe(ids[2:3], 0.2, [7], **kw).images
    reordered = pipe(ids[[3, 2]], 0.2, [8, 7], **kw).images
    assert torch.isfinite(batch).all() and batch.abs().max() <= 1.0
    # Same noise per seed; only float rounding of batch-size-dependent kernels may differ.
    torch.testing.assert_close(alone[0], batch[2], atol=2e-4, rtol=0)
    torch.testing.assert_close(reordered[1], batch[2], atol=2e-4, rtol=0)
    assert not torch.allclose(batch[2], batch[3], atol=1e-2)
    np_batch = pipe(ids, 0.2, [5, 6, 7, 8], num_inference_steps=2, scheduler=scheduler).images
    np_alone = pipe(ids[2:3], 0.2, [7], num_inference_steps=2, scheduler=scheduler).images
    assert np.abs(np_batch[2].astype(int) - np_alone[0].astype(int)).max() <= 1
    repeat = pipe(ids, 0.2, [5, 6, 7, 8], **kw).images
    assert torch.equal(repeat, batch)


def test_bad_input_fails_before_any_compute(pipe):
    calls = []

    def refuse(module, args, kwargs):
        calls.append(type(module).__name__)
        raise RuntimeError("network called")

    hooks = [
        pipe.unet.register_forward_pre_hook(refuse, with_kwargs=True),
        pipe.condition_encoder.register_forward_pre_hook(refuse, with_kwargs=True),
    ]
    ids = unit(2)
    cases = [
        ({"similarity": 1.5}, "must lie in"),
        ({"similarity": [0.1, -1.01]}, "must lie in"),
        ({"similarity": float("nan")}, "NaN or inf"),
        ({"similarity": torch.tensor([0.0, float("inf")])}, "NaN or inf"),
        ({"similarity": [0.1, 0.2, 0.3]}, "one value or 2 values"),
        ({"id_embeddings": unit(2, d=31)}, "N×32"),
        ({"id_embeddings": ids * 1.01}, "unit norm"),
        ({"id_embeddings": torch.full((2, 32), float("nan"))}, "finite"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"seeds": [1]}, "1 seeds for 2"),
        ({"seeds": [1, -4]}, "seeds\\[1\\]"),
        ({"scheduler": "heun"}, "unknown scheduler"),
        ({"output_type": "pil"}, "output_type"),
        ({"variation": torch.zeros(2, 3)}, "no variation attributes"),
        ({"device": "meta"}, "differs from the pipeline's device"),
        ({"guidance_scale": -0.5}, "guidance_scale must be >= 0"),
        ({"guidance_scale": float("nan")}, "guidance_scale must be finite"),
        ({"guidance_m": 1.2}, "guidance_m must lie in"),
    ]
    try:
        for change, message in cases:
            args = {
                "id_embeddings": ids,
                "similarity": 0.0,
                "seeds": [1, 2],
                "num_inference_steps": 2,
            }
            args.update(change)
            with pytest.raises(ValueError, match=message):
                pipe(**args)
        with pytest.raises(TypeError):
            pipe(ids, True, [1, 2])
        assert calls == []
        with pytest.raises(RuntimeError, match="network called"):  # the guard itself works
            pipe(ids, 0.0, [1, 2], num_inference_steps=2)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == ["CemiConditionEncoder"]
    slightly_off = ids * (1 + 5e-4)
    assert pipe(slightly_off, 0.0, [1, 2], num_inference_steps=1).images.shape == (2, 16, 16, 3)


def test_recognizer_similarity_is_measured_on_the_outputs(pipe, recognizer):
    ids = unit(3, seed=4)
    out = pipe(ids, 0.0, [1, 2, 3], num_inference_steps=2, recognizer=recognizer, output_type="pt")
    assert out.similarity.shape == (3,) and out.similarity.dtype == np.float32
    manual = (recognizer(out.images) * ids).sum(1).numpy()
    np.testing.assert_allclose(out.similarity, manual, atol=1e-5)
    assert pipe(ids, 0.0, [1, 2, 3], num_inference_steps=1).similarity is None


def test_identity_embeddings_from_images(recognizer):
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    from_uint8 = identity_embeddings_from_images(recognizer, images)
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    from_float = identity_embeddings_from_images(recognizer, as_float)
    torch.testing.assert_close(from_uint8, from_float)
    torch.testing.assert_close(from_uint8.norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="uint8"):
        identity_embeddings_from_images(recognizer, images.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        identity_embeddings_from_images(recognizer, as_float * 2)


def test_variation_attributes_reach_the_sampler():
    pipe = make_pipeline(num_variation_attrs=2)
    ids = unit(2)
    base = pipe(ids, 0.0, [1, 2], num_inference_steps=2, output_type="pt").images
    varied = pipe(
        ids,
        0.0,
        [1, 2],
        num_inference_steps=2,
        output_type="pt",
        variation=torch.tensor([[1.0, -1.0], [0.5, 0.0]]),
    ).images
    assert not torch.allclose(base, varied)
    with pytest.raises(ValueError, match="variation must be 2×2"):
        pipe(ids, 0.0, [1, 2], variation=torch.zeros(2, 3))


def test_similarity_guidance_extrapolates_along_m(pipe):
    ids, seeds = unit(3, seed=7), [5, 6, 7]

    def sample(m, **kw):
        return pipe(ids, m, seeds, num_inference_steps=3, output_type="pt", **kw).images

    plain = sample([0.9, 0.2, -0.1])
    # g = 1 is the plain sampler; g = 0 keeps only the reference branch, i.e. sampling at m_ref
    torch.testing.assert_close(sample([0.9, 0.2, -0.1], guidance_scale=1.0), plain)
    torch.testing.assert_close(sample([0.9, 0.2, -0.1], guidance_scale=0.0, guidance_m=0.4),
                               sample(0.4), atol=1e-5, rtol=0)
    guided = sample([0.9, 0.2, -0.1], guidance_scale=2.0, guidance_m=0.4)
    assert not torch.allclose(guided, plain, atol=1e-3)
    # each image is guided by its own m: image 0 alone gives what it gave in the batch
    alone = pipe(ids[:1], 0.9, seeds[:1], num_inference_steps=3, output_type="pt",
                 guidance_scale=2.0, guidance_m=0.4).images
    torch.testing.assert_close(alone, guided[:1], atol=1e-4, rtol=0)


def test_closed_loop_carries_each_images_variation(recognizer):
    pipe = make_pipeline(seed=2, num_variation_attrs=2)
    ids, seeds = unit(3, seed=8), [31, 32, 33]
    variation = torch.tensor([[1.0, -1.0], [0.0, 0.5], [-1.0, 1.0]])
    out = closed_loop_generate(pipe, ids, 0.5, seeds, recognizer, tolerance=0.0, max_tries=2,
                               variation=variation, num_inference_steps=2, output_type="pt")
    assert out.tries.tolist() == [2, 2, 2]
    for i in range(3):  # the kept image is the one its seed and its own variation give
        again = pipe(ids[i:i + 1], 0.5, [int(out.seeds[i])], variation=variation[i:i + 1],
                     num_inference_steps=2, output_type="pt").images[0]
        torch.testing.assert_close(again, out.images[i], atol=1e-4, rtol=0)
        other = pipe(ids[i:i + 1], 0.5, [int(out.seeds[i])], variation=variation[i - 1:i]
                     if i else variation[1:2], num_inference_steps=2, output_type="pt").images[0]
        assert not torch.allclose(other, out.images[i], atol=1e-3)
    with pytest.raises(ValueError, match="one row per seed"):
        closed_loop_generate(pipe, ids, 0.5, seeds, recognizer, variation=variation[:2])


def test_closed_loop_resamples_only_images_off_target(recognizer):
    # A random model made blind to m, so that targets can be set from a first measurement.
    pipe = make_pipeline(seed=3)
    with torch.no_grad():
        pipe.condition_encoder.similarity_proj.weight.zero_()
    ids = unit(4, seed=5)
    seeds = [21, 22, 23, 24]
    first = pipe(ids, 0.0, seeds, num_inference_steps=2, recognizer=recognizer)
    achieved = first.similarity.astype(np.float64)
    targets = achieved.copy()
    targets[2:] = np.where(achieved[2:] < 0, achieved[2:] + 0.7, achieved[2:] - 0.7)

    out = closed_loop_generate(
        pipe,
        ids,
        torch.tensor(targets, dtype=torch.float32),
        seeds,
        recognizer,
        tolerance=0.05,
        max_tries=3,
        num_inference_steps=2,
    )
    assert out.tries.tolist()[:2] == [1, 1]
    assert out.tries.tolist()[2:] == [3, 3]
    assert out.within_tolerance.tolist() == [True, True, False, False]
    np.testing.assert_array_equal(out.images[:2], first.images[:2])
    assert out.seeds.tolist()[:2] == [21, 22]

    stride = 1_000_003
    for i in (2, 3):
        tries = [seeds[i] + k * stride for k in range(3)]
        errors = [
            abs(
                float(
                    pipe(
                        ids[i : i + 1],
                        float(np.float32(targets[i])),
                        [s],
                        num_inference_steps=2,
                        recognizer=recognizer,
                    ).similarity[0]
                )
                - np.float32(targets[i])
            )
            for s in tries
        ]
        assert out.seeds[i] == tries[int(np.argmin(errors))]
        assert abs(out.similarity[i] - out.target[i]) <= min(errors) + 1e-4

    again = closed_loop_generate(
        pipe,
        ids,
        torch.tensor(targets, dtype=torch.float32),
        seeds,
        recognizer,
        tolerance=0.05,
        max_tries=3,
        num_inference_steps=2,
    )
    np.testing.assert_array_equal(again.images, out.images)
    np.testing.assert_array_equal(again.tries, out.tries)

    once = closed_loop_generate(
        pipe,
        ids,
        torch.tensor(targets, dtype=torch.float32),
        seeds,
        recognizer,
        max_tries=1,
        num_inference_steps=2,
    )
    assert once.tries.tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="max_tries"):
        closed_loop_generate(pipe, ids, 0.0, seeds, recognizer, max_tries=0)
    with pytest.raises(ValueError, match="recognizer"):
        closed_loop_generate(pipe, ids, 0.0, seeds, None)
