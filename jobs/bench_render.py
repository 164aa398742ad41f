"""Job entry point for the ToyFaces render benchmark (cemiray.bench.render): `python jobs/bench_render.py --help`."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from cemiray.bench.render import main

if __name__ == "__main__":
    main()  # main returns its figures (a dict), not an exit status
