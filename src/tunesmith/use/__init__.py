"""Use a tuned model: generate, chat, merge, export, serve."""
