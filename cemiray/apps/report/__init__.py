"""The experiment's HTML report (apps): figures, the page and its headless-Chromium check.

The experiment's HTML report: figures (matplotlib PNGs), the page and its report.json, and a
headless-Chromium check that the page renders its images."""

from cemiray.apps.report.browser import ChromiumError, render_in_chromium
from cemiray.apps.report.figures import ResultsError
from cemiray.apps.report.html import write_report

__all__ = ["ChromiumError", "ResultsError", "render_in_chromium", "write_report"]
