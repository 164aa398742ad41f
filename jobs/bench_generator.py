"""Job entry point for the generator benchmark (cemiray.bench.generator): `python jobs/bench_generator.py --help`."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from cemiray.bench.generator import main

if __name__ == "__main__":
    main()  # main returns its figures (a dict), not an exit status
