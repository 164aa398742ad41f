"""bench-gan's realism and novelty parts (bench): GAN samples in the judge's space.

Realism: Fréchet distance to real ToyFaces against the real-vs-real floor (and a trained DDPM's,
when given, at the same sample count), and the share passing the judge-norm quality floor.
Novelty: each image's highest similarity to the GAN's training identity centres, for GAN
samples and for real faces of unseen identities (the level no copying gives); the share of GAN
samples above the 99th percentile of the real ones."""

from __future__ import annotations

import numpy as np


def source_images(uri: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, labels) of a face source, read in this process."""
    from cemiray.data.images import decode_image
    from cemiray.data.sources import Source

    images, labels = [], []
    for row in Source.parse(uri).iter_rows():
        images.append(decode_image(bytes(row["image"]), where=uri))
        labels.append(int(row["label"]))
    return np.stack(images), np.asarray(labels)


def judged(judge, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit judge embeddings, raw judge feature norms)."""
    raw = judge.embed(images, normalize=False, batch_size=256)
    norms = np.linalg.norm(raw, axis=1)
    return raw / np.maximum(norms, 1e-12)[:, None], norms


def percentiles(x: np.ndarray) -> dict:
    return {f"p{q}": round(float(np.percentile(x, q)), 4) for q in (50, 95, 99)} | {
        "max": round(float(np.max(x)), 4), "mean": round(float(np.mean(x)), 4)}


def gan_seeds(cfg, n: int) -> list[int]:
    return [cfg.seed * 1_000_000 + k for k in range(n)]


def realism(cfg, gan, cache: dict) -> dict:
    from cemiray.diffusion.unconditional import load_unconditional, sample_unconditional
    from cemiray.eval.set_metrics import frechet_distance
    from cemiray.models.recognizer import load_recognizer
    from cemiray.models.stylegan import sample_gan

    judge = cache.setdefault("judge", load_recognizer(cfg.judge))
    real, real_norms = judged(judge, source_images(cfg.real)[0][:cfg.samples])
    floor, floor_norms = judged(judge, source_images(cfg.real_floor)[0][:cfg.samples])
    cache["real"] = real
    norm_floor = float(np.percentile(real_norms, 1))
    out = {"samples": cfg.samples, "space": f"judge {judge.content_hash[:12]}",
           "frechet_real_vs_real": frechet_distance(floor, real),
           "quality_norm_floor": norm_floor,
           "quality_pass_real": float((floor_norms >= norm_floor).mean()), "gan": {}}
    for psi in cfg.truncations:
        emb, norms = judged(judge, sample_gan(gan, gan_seeds(cfg, cfg.samples), psi))
        cache[f"gan:{psi}"] = emb
        fd = frechet_distance(emb, real)
        out["gan"][str(psi)] = {"frechet": fd, "frechet_over_floor": fd / out[
            "frechet_real_vs_real"], "quality_pass": float((norms >= norm_floor).mean())}
    if cfg.uncond:
        n = min(cfg.ddpm_samples, cfg.samples)
        ddpm = load_unconditional(cfg.uncond)
        emb, norms = judged(judge, sample_unconditional(ddpm, gan_seeds(cfg, n), cfg.ddpm_steps))
        first_gan = cache[f"gan:{cfg.truncations[0]}"][:n]
        out["ddpm"] = {"samples": n, "frechet": frechet_distance(emb, real),
                       "gan_frechet_same_n": frechet_distance(first_gan, real),
                       "floor_same_n": frechet_distance(floor[:n], real),
                       "quality_pass": float((norms >= norm_floor).mean())}
    else:
        out["ddpm"] = None
    return out


def novelty(cfg, gan, cache: dict) -> dict:
    """Highest judge cosine of each image to the GAN's training identity centres."""
    from cemiray.eval.seed_filters import label_centres, nearest_centres

    judge = cache["judge"]
    images, labels = source_images(cfg.train_data)
    centres, _ = label_centres(judged(judge, images)[0], labels)
    real, _ = nearest_centres(cache["real"], centres)
    # with a thousand centres even unseen real faces come close to one: the bar is the level
    # unseen real faces reach (their 99th percentile), not a fixed cosine
    bar = float(np.percentile(real, 99))
    out = {"training_identities": len(centres), "bar_real_unseen_p99": bar}
    for name, best in (("real_unseen", real), *(
            (f"gan_{psi}", nearest_centres(cache[f"gan:{psi}"], centres)[0])
            for psi in cfg.truncations)):
        out[name] = {**percentiles(best), "share_over_bar": float((best > bar).mean())}
    return out
