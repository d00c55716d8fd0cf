"""gvpo-bench: one training loop, interchangeable algorithms and tasks, MLflow tracking."""

__version__ = "0.1.0"
