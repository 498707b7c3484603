"""Models: resolving a name to a folder, checking weight files, loading, the chat rule, the KV cache."""
