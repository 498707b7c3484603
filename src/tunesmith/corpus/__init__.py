"""A folder of a team's documents as a corpus: read it, check it, split it by document (issue 39)."""
