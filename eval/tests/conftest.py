"""Puts eval/ on the import path, as running eval/run.py does."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
