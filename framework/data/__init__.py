"""Data sources (arrays, bundled sets, files) and the input pipeline."""
