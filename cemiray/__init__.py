"""cemiray: synthetic face-recognition data at cluster scale."""

__version__ = "0.1.0"
