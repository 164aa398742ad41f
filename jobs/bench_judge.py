"""Benchmark job: the shipped judge and E_id on the same held-out pairs (`cemiray.bench.judge`)."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from cemiray.bench.judge import main

if __name__ == "__main__":
    main()  # returns the report (a dict), so it is not an exit status
