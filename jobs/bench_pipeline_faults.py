"""Ray job entry point for `cemiray bench-pipeline-faults`: `python jobs/bench_generate.py [--config F] [key=value ...]`."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from cemiray.cli import job_main

main = job_main("bench-pipeline-faults")
if __name__ == "__main__":
    raise SystemExit(main())
