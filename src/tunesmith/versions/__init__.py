"""Versions of a tuned model: the run registry from the command line (`tunesmith runs`)."""
