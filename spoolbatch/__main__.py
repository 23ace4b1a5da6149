"""``python -m spoolbatch``."""

from spoolbatch.cli import main

main()
