"""The loops that combine parts: the experiment, its report, the centre analysis, the quickstart, evaluation."""
