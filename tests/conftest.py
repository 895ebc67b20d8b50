import json

import pytest
from pixeldit_testing import FIXTURES
from safetensors.torch import load_file


@pytest.fixture(scope="session")
def extra_configs():
    meta = json.loads((FIXTURES / "official_extra_configs.json").read_text())["configs"]
    return meta, load_file(FIXTURES / "official_extra_configs.safetensors")
