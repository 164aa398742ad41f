"""The CemiFace loop as one cached, resumable job (see cemiray.experiment.loop)."""
