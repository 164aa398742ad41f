"""Ray job entry point for `cemiray gpu-check`: `python jobs/gpu_check.py [--config F] [key=value ...]`."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from cemiray.cli import job_main

main = job_main("gpu-check")
if __name__ == "__main__":
    raise SystemExit(main())
