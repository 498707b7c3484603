"""The run registry: the SQLite store, the recorder runs use, run folders read back, captures, tracking."""
