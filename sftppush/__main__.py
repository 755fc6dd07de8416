"""`python -m sftppush`: the same entry point as the console script."""

from sftppush.cli import main

main()
