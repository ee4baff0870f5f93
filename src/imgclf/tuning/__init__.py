"""Hyperparameter search on Optuna: spaces, storage, trial queue, workers and results."""
