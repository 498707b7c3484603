"""`tunesmith sweep`: search training settings with Optuna, every trial a registered run."""
