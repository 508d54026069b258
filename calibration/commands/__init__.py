"""CLI command groups of `python -m calibration`, one module each (see calibration.__main__)."""
