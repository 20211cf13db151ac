"""Entry points: the commands a user types (kdrun, kdrun-report, kdrun-export, kdrun-eval, kdrun-layers, reproduce)."""
