"""The `emirax` command. Placeholder written by the foundation; the CLI helper replaces it."""


def main() -> None:
    """Entry point of the `emirax` console script (not implemented yet)."""
    raise SystemExit("emirax: the command line is not built yet")
