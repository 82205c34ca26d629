"""autotts command-line entry point (`python -m autotts`)."""
