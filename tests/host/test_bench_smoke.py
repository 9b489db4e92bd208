"""The benchmarks' --tiny modes run end to end and end with their ratios lines: the triplet's
four variants, its --layers rows, and the edits' (re-harmonise, decompose)."""

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time

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


SILENT_LIMIT_S = 10 * 60
"""A benchmark is stopped only when it has made no progress this long: no output and no CPU
time used by it or its children. However slow or busy the machine, a working run goes on."""
TOTAL_LIMIT_S = 60 * 60
"""... and in any case after this long (a run that spins without end)."""
POLL_S = 1.0


def cpu_seconds(pid: int) -> float | None:
    """CPU time used by a process, its finished children and its running ones (None: unknown)."""
    try:
        import psutil  # ComfyUI's requirements have it

        process = psutil.Process(pid)
        times = process.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in process.children(recursive=True):
            child_times = child.cpu_times()
            total += child_times.user + child_times.system
        return total
    except Exception:  # no psutil, or the process just ended
        return None


def stop(process: subprocess.Popen) -> None:
    """Kill ``process`` and the children it forked."""
    try:
        import psutil

        children = psutil.Process(process.pid).children(recursive=True)
    except Exception:
        children = []
    process.kill()
    for child in children:
        with contextlib.suppress(Exception):
            child.kill()
    process.wait()


def run_watched(command: list[str], **popen) -> subprocess.CompletedProcess[str]:
    """Run ``command`` to its end while it makes progress (its output grows or it uses CPU
    time); stop it and fail once it has made none for SILENT_LIMIT_S, or after TOTAL_LIMIT_S."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, **popen)
        try:
            started = last_progress = time.monotonic()
            progress = None
            while process.poll() is None:
                time.sleep(POLL_S)
                now = (
                    os.fstat(out.fileno()).st_size,
                    os.fstat(err.fileno()).st_size,
                    cpu_seconds(process.pid),
                )
                if now != progress:
                    progress, last_progress = now, time.monotonic()
                silent, running = time.monotonic() - last_progress, time.monotonic() - started
                if silent > SILENT_LIMIT_S or running > TOTAL_LIMIT_S:
                    stop(process)
                    err.seek(0)
                    tail = err.read().decode(errors="replace")[-2000:]
                    why = f"no progress for {silent:.0f} s" if silent > SILENT_LIMIT_S else f"{running:.0f} s"
                    raise AssertionError(f"stopped after {why}: {command}\n{tail}")
        finally:
            if process.poll() is None:
                stop(process)
        out.seek(0)
        err.seek(0)
        stdout, stderr = (f.read().decode(errors="replace") for f in (out, err))
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def run_bench(comfy_host, *extra: str, script: str = BENCH.name) -> list[str]:
    env = {**os.environ, ENV_COMFYUI_PATH: str(comfy_host.root)}
    done = run_watched(
        [sys.executable, str(BENCH.with_name(script)), "--tiny", "--repeats", "1", "--steps", "2", *extra],
        cwd=REPO_ROOT,
        env=env,
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
