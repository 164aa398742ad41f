"""Ray job entry point: the main job on the embedded default (see `cemiray quickstart --help`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package, under --working-dir


def main(argv=None) -> int:
    from cemiray.cli import main as cli_main

    return cli_main(argv, job="quickstart")


if __name__ == "__main__":
    raise SystemExit(main())
