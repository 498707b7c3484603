"""Scores for one output against its references and the house style: text metrics with bootstrap
intervals and paired tests, format rules, an LLM judge. Used by evaluation (eval/), by training that
validates on a metric or grades samples (train/), and below both, so neither imports the other."""
