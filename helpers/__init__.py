"""Shared helpers for the Human3.6M benchmark notebooks: protocol, data, pipeline, models, metrics, reports."""
__version__ = "0.1.0"
