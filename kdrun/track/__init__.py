"""Live loggers and experiment trackers (CSV, TensorBoard, W&B, MLflow)."""
