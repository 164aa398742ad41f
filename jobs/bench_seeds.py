"""Job entry point for the seed-filter benchmark (cemiray.bench.seeds): `python jobs/bench_seeds.py --help`."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from cemiray.bench.seeds import main

if __name__ == "__main__":
    main()  # main returns its figures (a dict), not an exit status
