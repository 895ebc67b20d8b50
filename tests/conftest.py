import json
import os

import pytest
import torch
from pixeldit_testing import FIXTURES
from safetensors.torch import load_file


def pytest_configure(config):
    # Under pytest-xdist every worker is a process of its own: one torch thread each, so that `-n 2` on two cores does
    # not oversubscribe them (OpenMP threads spin-waiting on a busy core slow tiny models down many times).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def extra_configs():
    meta = json.loads((FIXTURES / "official_extra_configs.json").read_text())["configs"]
    return meta, load_file(FIXTURES / "official_extra_configs.safetensors")
