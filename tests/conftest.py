"""Shared fixtures. Real data lives in ../shared/data (read-only); tests copy what they must alter."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report):
    """Captured output with file names that are not UTF-8 (the tests of such names log them) made escaped text:
    pytest-xdist sends each report to the controller as UTF-8, and a lone surrogate there crashes the worker."""
    from ftkit.data.sources import printable

    report.sections = [(title, printable(content) if isinstance(content, str) else content)
                       for title, content in report.sections]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"the shared data sets are expected at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="module")
def mnist(shared_data) -> str:
    return str(shared_data / "mnist")


@pytest.fixture(scope="module")
def tiny_mnist_run(mnist, tmp_path_factory):
    """A finished run (one epoch) of the tests' tiny BatchNorm backbone on MNIST digits 0-2: a few seconds."""
    from _training_helpers import QUIET, mnist_recipe, register_tiny

    from ftkit.training import train

    register_tiny()
    recipe = mnist_recipe(mnist, phases=[{"train": "all", "epochs": 1, "lr": 0.05}])
    return train(recipe, out=tmp_path_factory.mktemp("r") / "run", **QUIET)
