"""Make the bench modules importable (bench/ is a directory of scripts, not a package)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
