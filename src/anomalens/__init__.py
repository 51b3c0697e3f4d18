"""anomalens: find, localize and explain defects in industrial images."""

__version__ = "0.1.0"
