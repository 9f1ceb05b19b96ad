"""Rule tests: scenario files and the pytest plugin (being written)."""
