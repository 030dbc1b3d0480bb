"""Each image installs one extra: its modules must import without the others' libraries."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

CONSUMER_ONLY = ["sqlalchemy", "prometheus_client", "onnxruntime", "psycopg"]
TRAINING_ONLY = ["sklearn", "skl2onnx", "pandas", "matplotlib", "scipy", "onnx"]


@pytest.mark.parametrize(
    ("modules", "blocked"),
    [
        pytest.param(
            [
                "creditstream.producer",
                "creditstream.client",
                "creditstream.cli",
                "creditstream.stages.raw",
                "creditstream.stages.topology",
            ],
            [*CONSUMER_ONLY, "sklearn", "skl2onnx", "matplotlib"],
            id="producer-image",
        ),
        pytest.param(
            [
                "creditstream.consumer",
                "creditstream.scoring",
                "creditstream.store",
                "creditstream.client",
                "creditstream.cli",
                "creditstream.stages.run",
                "creditstream.stages.worker",
                "creditstream.stages.graphs",
            ],
            TRAINING_ONLY,
            id="consumer-image",
        ),
    ],
)
def test_module_imports_without_other_extras(modules: list[str], blocked: list[str]) -> None:
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        f"for name in {modules!r}: __import__(name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr[-1500:]
