"""`tunesmith serve`: an OpenAI-compatible endpoint (routes, batching engine, request schemas)."""
