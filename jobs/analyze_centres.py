"""Ray job entry point for `cemiray analyze-centres`: `python jobs/analyze_centres.py [key=value ...]`."""
import sys, pathlib  # noqa: E401  (the package root, for `ray job submit --working-dir .`)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from cemiray.cli import job_main  # noqa: E402
main = job_main("analyze-centres")
if __name__ == "__main__":
    raise SystemExit(main())
