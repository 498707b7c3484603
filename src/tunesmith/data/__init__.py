"""Data: read every format users bring, normalize to chat examples, check, prepare."""
