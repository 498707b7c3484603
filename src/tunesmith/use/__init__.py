"""Use a tuned model: generate, chat, and drafts from a teacher model."""
