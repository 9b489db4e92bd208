"""The benchmarks' --tiny modes run end to end and end with their ratios lines: the triplet's
four variants, its --layers rows, and the edits' (re-harmonise, decompose)."""

import os
import re
import subprocess
import sys

from support.comfy_import import ENV_COMFYUI_PATH, REPO_ROOT

BENCH = REPO_ROOT / "tests" / "benchmarks" / "bench_triplet.py"
NUMBER = r"\d+\.\d\d"
MB = r"(-?\d+|n/a)"
RATIOS = re.compile(
    rf"ratios: faithful {NUMBER} fast {NUMBER} faithful_vs_seq {NUMBER} fast_vs_seq {NUMBER} "
    rf"peak_extra_mb {MB}"
)
LAYER_RATIOS = re.compile(
    rf"ratios: layers1 {NUMBER} layers2 {NUMBER} peak_extra_mb layers1 {MB} layers2 {MB}"
)


def run_bench(comfy_host, *extra: str, script: str = BENCH.name) -> list[str]:
    env = {**os.environ, ENV_COMFYUI_PATH: str(comfy_host.root)}
    done = subprocess.run(
        [sys.executable, str(BENCH.with_name(script)), "--tiny", "--repeats", "1", "--steps", "2", *extra],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()


def test_tiny_benchmark_prints_table_and_ratios_line(comfy_host):
    lines = run_bench(comfy_host)
    assert RATIOS.fullmatch(lines[-1]), lines[-1]
    table = "\n".join(lines)
    for label in ("(a) plain batch-3", "(b) LayerFusion", "(c) LayerFusion", "(d) LayerDiffuse"):
        assert label in table
    assert "peak_extra_mb n/a" not in lines[-1] or not hasattr(os, "fork")


def test_tiny_layers_benchmark_prints_one_row_per_k_and_the_memory_fit(comfy_host):
    lines = run_bench(comfy_host, "--layers", "1", "2")
    assert LAYER_RATIOS.fullmatch(lines[-1]), lines[-1]
    rows = [line for line in lines if re.match(r"\|\s+\d+ \|", line)]
    assert [row.split("|")[1].strip() for row in rows] == ["1", "2"]
    assert [row.split("|")[2].strip() for row in rows] == ["6+1", "8+2"]  # 2 (K + 2) + K rows
    if hasattr(os, "fork"):
        assert any(line.startswith("measured at 128 px:") for line in lines), "\n".join(lines)
        assert "largest K per card: not computed" in "\n".join(lines)


EDIT_RATIOS = re.compile(rf"ratios: reharmonize {NUMBER} expected {NUMBER} decompose {NUMBER}")


def test_tiny_edits_benchmark_prints_its_table_and_ratios_line(comfy_host):
    lines = run_bench(comfy_host, script="bench_edits.py")
    assert EDIT_RATIOS.fullmatch(lines[-1]), lines[-1]
    assert "expected 0.15" in lines[-1]  # (1 - 0.40) / (2 + 2)
    table = "\n".join(lines)
    for label in ("layered run", "re-harmonise (BLENDED only)", "decompose (inversion + run)"):
        assert label in table
