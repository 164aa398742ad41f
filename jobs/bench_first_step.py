"""Benchmark job: seconds from `cemiray train-fr` to its first step on a fresh machine (`cemiray.bench.first_step`)."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from cemiray.bench.first_step import main

if __name__ == "__main__":
    raise SystemExit(main())
