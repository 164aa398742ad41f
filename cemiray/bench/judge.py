"""The judge benchmark (bench): the shipped judge and E_id on the same held-out pairs.

    python jobs/bench_judge.py --results docs/results/judge.json

Renders the 3,000-pair verification `.bin` of ToyFaces identities 500–599 (no model trained on
them) and scores both recognisers by the 10-fold protocol, with their mean genuine and impostor
similarities, so the judge's card figure ("at least E_id's accuracy") has a command.
"""

from __future__ import annotations

import argparse
import json
import sys

from cemiray.assets import TOYFACES_JUDGE, TOYFACES_RECOGNIZER
from cemiray.data import storage


def score(url: str, images, issame) -> dict:
    import numpy as np

    from cemiray.eval.verification import embed_with_flip, evaluate_pairs
    from cemiray.models.recognizer import load_recognizer

    recognizer = load_recognizer(url)
    embeddings = embed_with_flip(recognizer, images)
    result = evaluate_pairs(embeddings[0::2], embeddings[1::2], issame)
    same = np.asarray(issame, dtype=bool)
    cosine = np.sum(embeddings[0::2] * embeddings[1::2], axis=1)
    return {"model_hash": recognizer.content_hash,
            "accuracy": round(result["accuracy_mean"], 4),
            "accuracy_std": round(result["accuracy_std"], 4), "eer": round(result["eer"], 4),
            "genuine_mean": round(float(cosine[same].mean()), 3),
            "impostor_mean": round(float(cosine[~same].mean()), 3)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_judge")
    parser.add_argument("--judge", default=TOYFACES_JUDGE)
    parser.add_argument("--recognizer", default=TOYFACES_RECOGNIZER, help="E_id")
    parser.add_argument("--results", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)

    from cemiray.data.verification_bin import decode_bin
    from cemiray.pipeline.render import RenderConfig, write_verification_bin

    render = RenderConfig(out=args.out, first_identity=500, num_identities=100,
                          samples_per_identity=20, formats=["bin"], bin_pairs=3000)
    url = storage.join(storage.absolute(args.out), "verification.bin")
    if not storage.exists(url):
        storage.makedirs(storage.absolute(args.out))
        write_verification_bin(render, url)
    images, issame = decode_bin(url, render.world.size)
    report = {"verification_set": "3000 pairs of ToyFaces identities 500-599, 20 images each, "
                                  "10 folds (identities no model trained on)",
              "judge": score(args.judge, images, issame),
              "e_id": score(args.recognizer, images, issame),
              "command": "python jobs/bench_judge.py " + " ".join(argv)}
    report["judge_at_least_e_id"] = report["judge"]["accuracy"] >= report["e_id"]["accuracy"]
    text = json.dumps(report, indent=1) + "\n"
    storage.atomic_write_text(storage.join(storage.absolute(args.out), "judge.json"), text)
    if args.results:
        storage.atomic_write_text(args.results, text)
    print(text, end="")
    return report
