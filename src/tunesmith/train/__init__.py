"""Training: setup -> fit -> validate."""
