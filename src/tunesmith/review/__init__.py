"""Review: people rate, compare and correct outputs; their judgements become training data."""
