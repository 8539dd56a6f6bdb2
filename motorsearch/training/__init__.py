"""The training loop; it knows nothing of Ray or MLflow."""
