"""Prompt search with Ray Tune and Optuna, reporting, and the command line."""
