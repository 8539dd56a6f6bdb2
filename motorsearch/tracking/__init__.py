"""MLflow tracking of searches and trials, and picking/exporting the best model."""
