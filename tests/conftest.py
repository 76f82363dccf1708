from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRUTH = ROOT.parent / "shared" / "truth" / "h100-h200-public.jsonl"
if not TRUTH.exists():  # a plain clone: the copy shipped in data/samples/ (data/samples/README.md)
    TRUTH = ROOT / "data" / "samples" / "h100-h200-public.jsonl"


@pytest.fixture
def truth_file():
    if not TRUTH.exists():
        pytest.skip("../shared/truth is not beside this checkout")
    return TRUTH
