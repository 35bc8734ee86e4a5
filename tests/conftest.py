"Shared pytest set-up: tests never reach the network and run single-threaded torch by default."
import os
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYTHONHASHSEED", "0")
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

@pytest.fixture(scope="session")
def repo() -> Path:
    "The repository root."
    return REPO

@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    "An empty TORCH_HOME so nothing is read from (or written to) the user's caches."
    home = tmp_path / "torch_home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home
