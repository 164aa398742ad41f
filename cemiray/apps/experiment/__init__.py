"""The CemiFace loop as one cached, resumable job (see cemiray.apps.experiment.loop)."""
