"""The upgrade tests import their helpers (releases.py) and app (upgradeapp.py) by name."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
