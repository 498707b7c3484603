"""`tunesmith runs`: list, show, compare, tag, promote, remove and import runs of the registry."""
