"""The user's files and ours: atomic writes, the output-folder rules, tunesmith's home, fault injection."""
