"""Metrics computed exactly as the field computes them."""
