"""Optuna studies over kdrun jobs (hydra/sweeper=optuna): search space, objective, study, what it leaves."""
