"""`cemiray bench-gan` (bench): the GAN identity generator measured by independent models.

Speed, realism, novelty and demographic control, each measured by a model that played no part
in making the images.

    cemiray bench-gan results=docs/results/gan.json

Parts (one JSON, `OUT/bench_gan.json`):
- speed: GAN identities/s against the DDPM identity generator's at the same image size and
  thread count, alternating repeats in one run (a DDPM's speed does not depend on its weights:
  without `uncond=` an untrained one of the tiny preset is timed);
- realism (cemiray.bench.gan_quality): Fréchet distance in the independent judge's embedding
  space between GAN samples and real ToyFaces, against the floor of two real samples of the
  same world (and a trained DDPM's samples when `uncond=` is given); the share of samples whose
  judge feature norm reaches the real images' 1st percentile (the seeds job's quality proxy);
- novelty: each sample's highest judge similarity to the centres of the GAN's training
  identities, against the same for real faces of identities nobody trained on;
- demographics (cemiray.bench.gan_targets): `cemiray seeds` fills a target over ToyFaces
  groups from GAN samples aimed by class-conditional truncation (and by rejection alone, for
  comparison), labelled by the selection classifier and measured by the independent one
  (other identities, other architecture), with the rejection rate and the seeds job's time
  projected to 10K identities; then the CemiFace generator's images of kept identities: the
  share that keep their identity's group, their separability (Fisher ratio) and centre
  similarity in judge space."""

from __future__ import annotations

import time

from pydantic import Field

from cemiray.assets import (
    TOYFACES_ATTRIBUTES,
    TOYFACES_ATTRIBUTES_JUDGE,
    TOYFACES_GAN,
    TOYFACES_GENERATOR,
    TOYFACES_JUDGE,
    TOYFACES_RECOGNIZER,
)
from cemiray.runtime.config import JobConfig


class BenchGANConfig(JobConfig):
    out: str = "runs/bench_gan"
    results: str | None = Field(None, description="also write the JSON here")
    gan: str = Field(TOYFACES_GAN, description="StyleGAN generator folder (train-gan)")
    uncond: str | None = Field(None, description="a trained unconditional DDPM folder "
                               "(train-uncond) to compare realism with; speed uses an "
                               "untrained tiny one when absent")
    judge: str = Field(TOYFACES_JUDGE, description="the independent recogniser that measures")
    attributes: str = Field(TOYFACES_ATTRIBUTES, description="attribute predictor that selects "
                            "(conditional sampling, rejection)")
    attributes_judge: str = Field(TOYFACES_ATTRIBUTES_JUDGE, description="independent attribute "
                                  "predictor that measures (other identities)")
    generator: str = Field(TOYFACES_GENERATOR, description="CemiFace pipeline that makes the "
                           "kept identities' images")
    recognizer: str = Field(TOYFACES_RECOGNIZER, description="E_id that conditions it")
    real: str = "toyfaces:?seed=0&ids=40000-41999&samples=1&size=32"
    real_floor: str = "toyfaces:?seed=0&ids=42000-43999&samples=1&size=32"
    train_data: str = Field("toyfaces:?seed=0&ids=20000-20999&samples=10&size=32",
                            description="the GAN's training faces (novelty is measured against "
                            "their identity centres)")
    samples: int = Field(2000, ge=10, description="GAN samples per figure")
    truncations: list[float] = Field(default_factory=lambda: [1.0, 0.7])
    speed_images: int = Field(256, ge=1)
    ddpm_steps: int = Field(50, ge=1, description="the seeds job's default DDPM steps")
    ddpm_samples: int = Field(500, ge=10, description="DDPM samples for its realism figures "
                              "(the GAN's and the floor are recomputed at this count)")
    repeats: int = Field(3, ge=1)
    threads: int = Field(1, ge=1, description="torch threads while timing")
    attribute: str = Field("group", description="the demographic attribute of the target")
    target: dict[str, float] | None = Field(None, description="target shares per value; "
                                            "default: uniform over the values the predictor has")
    identities: int = Field(1000, ge=4, description="identities the seeds job fills to the "
                            "target (a run of a twentieth as many, mostly fixed costs, gives "
                            "the projection's intercept)")
    overshoot: float = Field(1.5, ge=1, description="GAN candidates per kept identity")
    uniqueness_threshold: float = Field(0.7, ge=-1, le=1, description="the seeds runs' (E_id "
                                        "cosine), as the experiment's")
    leakage_threshold: float = Field(0.8, ge=-1, le=1, description="the seeds runs' against the "
                                     "GAN's training identities (E_id cosine; ToyFaces genuine "
                                     "pairs average ≈ 0.55)")
    project_to: int = Field(10000, ge=1, description="identities the seeds time is projected to")
    condition_psi: float = Field(1.0, ge=0, le=1, description="pull toward the cell's mean w "
                                 "after screening (1: none; 0.7 kept 450 of 1,000 identities "
                                 "against 932: pulled faces are alike)")
    calibration: int = Field(2000, ge=10, description="samples that locate the cells in W")
    generated_identities: int = Field(48, ge=2, description="kept identities given to CemiFace")
    images_per_identity: int = Field(8, ge=2)
    m: float = Field(0.6, description="CemiFace similarity of those images")
    seed: int = 0


def time_gan_vs_ddpm(cfg: BenchGANConfig, gan) -> dict:
    """Identities/s of each generator over `speed_images` seeds, alternating, median ratio."""
    import torch

    from cemiray.bench.common import median_ratio
    from cemiray.diffusion.unconditional import (
        UnconditionalGenerator,
        build_noise_scheduler,
        build_unet,
        load_unconditional,
        sample_unconditional,
    )
    from cemiray.models.stylegan import sample_gan

    torch.set_num_threads(cfg.threads)
    size = gan.image_size
    if cfg.uncond:
        ddpm = load_unconditional(cfg.uncond)
    else:
        ddpm = UnconditionalGenerator(build_unet("tiny", image_size=size).eval(),
                                      build_noise_scheduler("tiny"), {"untrained": True})
    if ddpm.image_size != size:
        raise ValueError(f"the DDPM makes {ddpm.image_size} px images, the GAN {size} px: "
                         "compare at the same size")
    seeds = list(range(cfg.speed_images))
    ddpm_seeds = seeds[:max(8, cfg.speed_images // 8)]  # ~50× slower: fewer images, same rate
    gan_rates, ddpm_rates = [], []
    sample_gan(gan, seeds[:8], 1.0)  # warm-up
    for _ in range(cfg.repeats):
        t = time.perf_counter()
        sample_gan(gan, seeds, 1.0, batch_size=64)
        gan_rates.append(len(seeds) / (time.perf_counter() - t))
        t = time.perf_counter()
        sample_unconditional(ddpm, ddpm_seeds, cfg.ddpm_steps)
        ddpm_rates.append(len(ddpm_seeds) / (time.perf_counter() - t))
    return {"image_size": size, "threads": cfg.threads, "ddpm_steps": cfg.ddpm_steps,
            "ddpm_trained": bool(cfg.uncond), "gan_images": len(seeds),
            "ddpm_images": len(ddpm_seeds), "gan_img_per_s": gan_rates,
            "ddpm_img_per_s": ddpm_rates, "ratio": median_ratio(gan_rates, ddpm_rates)}


def run(cfg: BenchGANConfig) -> dict:
    import json

    from cemiray.bench.common import write_result
    from cemiray.bench.gan_quality import novelty, realism
    from cemiray.bench.gan_targets import demographics
    from cemiray.data import storage
    from cemiray.models.stylegan_io import load_gan

    t0 = time.perf_counter()
    storage.makedirs(cfg.out)
    gan, _, meta = load_gan(cfg.gan)
    figures: dict = {"gan": {"folder": cfg.gan, "step": meta.get("step"),
                             "images_seen": meta.get("images_seen")}}
    figures["speed"] = time_gan_vs_ddpm(cfg, gan)
    print(f"bench-gan: GAN {figures['speed']['ratio']:.0f}× the DDPM's identities/s", flush=True)
    cache: dict = {}
    figures["realism"] = realism(cfg, gan, cache)
    figures["novelty"] = novelty(cfg, gan, cache)
    figures["demographics"] = demographics(cfg, gan, cache)
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    url = write_result(cfg.out, "bench_gan", cfg.model_dump(mode="json"), figures)
    if cfg.results:
        storage.atomic_write_text(cfg.results, storage.read_text(url))
    print(json.dumps({k: figures[k] for k in ("speed", "realism")}, indent=1, default=str)[:3000])
    return figures
