"""The project's bundled, synthetic demo replay environment (see README.md in this folder)."""

from pathlib import Path

DEMO_PATH = Path(__file__).with_name("demo.json.gz")
