"""`python -m deepcrossing.cli`."""

from deepcrossing.cli import main

main()
