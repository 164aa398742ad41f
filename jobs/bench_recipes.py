"""Benchmark job: the generator recipes side by side (`cemiray.bench.recipes`)."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from cemiray.bench.recipes import main

if __name__ == "__main__":
    main()  # returns the table (a dict), so it is not an exit status
