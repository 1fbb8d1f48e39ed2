"""Pure functions over arrays: linear heads, calibration, uncertainty and selection."""
