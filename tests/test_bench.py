"""The throughput bench runs and reports what it promises (figures themselves are not asserted:
speed is checked by running the bench, not by timed tests)."""
import json

import pytest

from conftest import assert_refused, call_script

BENCH = "bench/throughput.py"


@pytest.mark.keras
@pytest.mark.slow
def test_bench_measures_ours_and_each_peer(tmp_path, capsys):
    out = tmp_path / "bench.json"
    small = ["--device", "cpu", "--images", "24", "--batch-size", "8"]
    rc, stdout, err = call_script(capsys, BENCH, *small, "--regimes", "freeze", "--peer", "baseline", "--json", out)
    assert rc == 0, err
    freeze = json.loads(out.read_text())["freeze"]  # the cheaper training regime: the same code measures both
    for key in ("epoch_ips", "ceiling_ips", "baseline_ips", "peak_mem_bytes", "step_mem_bytes", "baseline_peak_mem_bytes"):
        assert freeze[key] > 0, key
    assert freeze["images"] == 24 and freeze["trainable_params"] == 2570 and "keras_ips" not in freeze
    assert "ours/baseline" in stdout and "freeze: cpu" in stdout

    rc, stdout, err = call_script(capsys, BENCH, *small, "--regimes", "infer", "--peer", "keras", "--json", out)
    assert rc == 0, err
    results = json.loads(out.read_text())
    infer = results["infer"]
    assert infer["keras_ips"] > 0 and infer["epoch_ips"] > 0 and "baseline_ips" not in infer
    assert f"{infer['ours_over_keras']:.2f}" in stdout  # the table says what the JSON holds
    assert "fp32" in infer["settings"]  # evaluation's default precision, whatever the CPU
    assert results["peers"] == ["keras"] and "ours/keras" in stdout


def test_bench_refuses_bad_options(tmp_path, capsys):
    for args, needle in ((["--images", "0"], "--images must be between"), (["--json", str(tmp_path)], "is a folder"),
                         (["--regimes", "sideways"], "invalid choice")):
        rc, _, err = call_script(capsys, BENCH, "--device", "cpu", *args)
        assert_refused(rc, err, needle)
