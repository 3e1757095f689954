"""The inline backend runs without Flower or Ray: importing it loads neither."""

import subprocess
import sys


def test_inline_backend_imports_neither_flwr_nor_ray():
    code = (
        "import sys, fedlab.sim.inline, fedlab.sim.pool, fedlab.sim.worker; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'flwr', 'ray'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
