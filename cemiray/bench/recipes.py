"""The generator recipes side by side (bench): one table of `jobs/bench_generator.py` runs.

One run per recipe, collected with the judge's Spearman and its Fisher interval. Each run is `python jobs/bench_generator.py --out runs/recipe_<name> --minutes M --identities N
--results runs/recipe_<name>.json --set pairing=… preset_overrides.prediction_type=…`; this reads
its results file, its training config and its last "done" metrics record."""

from __future__ import annotations

import argparse
import json

from cemiray.data import storage
from cemiray.eval.statistics import correlation_ci
from cemiray.runtime.machine import repository_relative


def recipe_row(out: str, results: str) -> dict:
    figures = json.loads(storage.read_text(results))
    train = json.loads(storage.read_text(storage.join(out, "train", "config.json")))
    records = [json.loads(ln) for ln in storage.read_text(
        storage.join(out, "train", "metrics.jsonl")).splitlines() if ln.strip()]
    done = [r for r in records if r["event"] == "done"][-1]
    n = figures["identities"] * len(figures["judge"]["per_target_mean"])
    low, high = correlation_ci(figures["judge"]["spearman"], n)
    scheduler = json.loads(storage.read_text(storage.join(
        out, "train", "generator", "scheduler", "scheduler_config.json")))
    return {"pairing": train.get("pairing"), "prediction_type": scheduler["prediction_type"],
            "steps": done["step"], "images_seen": done.get("images_seen"),
            "judge": {**figures["judge"], "spearman_ci95_fisher": [round(low, 3), round(high, 3)]},
            "e_id": {k: figures["e_id"][k] for k in ("spearman", "open_loop_mae",
                                                     "per_target_mean")},
            "images": n}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="name=out",
                        help="a recipe's name and its bench_generator --out (results: <out>.json)")
    parser.add_argument("--results", required=True, help="the combined JSON to write")
    args = parser.parse_args(argv)
    recipes = {}
    for item in args.runs:
        name, sep, out = item.partition("=")
        if not sep:
            raise SystemExit(f"{item!r}: expected name=out")
        recipes[name] = recipe_row(out, f"{out}.json")
    real = json.loads(storage.read_text(f"{out}.json"))["real_genuine_mean"]
    table = repository_relative({
        "command": "python jobs/bench_recipes.py " + " ".join(args.runs)
                   + f" --results {args.results}",
        "measured_by": "judge (E_id beside)", "real_genuine_mean": real,
        "interval_note": "Fisher-z over the images taken as independent (images of one identity "
                         "are not: optimistic); one training per recipe, so the spread between "
                         "trainings is not in it",
        "recipes": recipes})
    storage.atomic_write_text(args.results, json.dumps(table, indent=1) + "\n")
    for name, row in recipes.items():
        print(f"{name:10s} steps {row['steps']:5d}  judge Spearman {row['judge']['spearman']:+.3f} "
              f"{row['judge']['spearman_ci95_fisher']}")
    return table
