"""`python -m emirax` runs the `emirax` command."""

from emirax.cli import main

main()
