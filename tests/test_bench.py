"""The throughput bench runs and reports what it promises (figures themselves are not asserted:
speed is checked by running the bench, not by timed tests)."""
import json

from conftest import run_script


def test_bench_prints_the_table_and_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    r = run_script("bench/throughput.py", "--device", "cpu", "--images", "48", "--batch-size", "16", "--json", out)
    assert r.returncode == 0, r.stderr
    assert "epoch/ceiling" in r.stdout and "ours/baseline" in r.stdout and "freeze/full peak memory" in r.stdout
    results = json.loads(out.read_text())
    for regime in ("freeze", "full"):
        figures = results[regime]
        for key in ("epoch_ips", "ceiling_ips", "baseline_ips", "peak_mem_bytes", "step_mem_bytes"):
            assert figures[key] > 0, (regime, key)
        assert figures["images"] == 48
        assert abs(figures["epoch_over_ceiling"] - figures["epoch_ips"] / figures["ceiling_ips"]) < 1e-9
    assert results["freeze"]["step_mem_bytes"] < results["full"]["step_mem_bytes"] / 4
