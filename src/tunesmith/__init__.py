"""tunesmith: fine-tune a small language model on your own examples, offline, and prove it helped."""

__version__ = "0.1.0"
