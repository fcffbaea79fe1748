import sys
from pathlib import Path

# inf_rules.py sits next to the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent))
