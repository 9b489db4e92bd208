"""The triplet benchmark's --tiny mode runs end to end and ends with the ratios line."""

import os
import re
import subprocess
import sys

from support.comfy_import import ENV_COMFYUI_PATH, REPO_ROOT

BENCH = REPO_ROOT / "tests" / "benchmarks" / "bench_triplet.py"
NUMBER = r"\d+\.\d\d"
RATIOS = re.compile(
    rf"ratios: faithful {NUMBER} fast {NUMBER} faithful_vs_seq {NUMBER} fast_vs_seq {NUMBER} "
    r"peak_extra_mb (-?\d+|n/a)"
)


def test_tiny_benchmark_prints_table_and_ratios_line(comfy_host):
    env = {**os.environ, ENV_COMFYUI_PATH: str(comfy_host.root)}
    done = subprocess.run(
        [sys.executable, str(BENCH), "--tiny", "--repeats", "1", "--steps", "2"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert RATIOS.fullmatch(lines[-1]), lines[-1]
    table = "\n".join(lines)
    for label in ("(a) plain batch-3", "(b) LayerFusion", "(c) LayerFusion", "(d) LayerDiffuse"):
        assert label in table
    assert "peak_extra_mb n/a" not in lines[-1] or not hasattr(os, "fork")
