"""autotts command-line entry point (`python -m autotts`)."""
from autotts.cli import run

run()
