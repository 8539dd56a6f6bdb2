"""Hyperparameter search on Ray Tune with the Optuna searcher."""
