"""Ray job entry point for `cemiray analyze-centres`: `python jobs/analyze_centres.py [key=value ...]`."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from cemiray.cli import job_main

main = job_main("analyze-centres")
if __name__ == "__main__":
    raise SystemExit(main())
