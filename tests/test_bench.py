"""`finemix bench` runs end to end (tiny zoo; no timing is asserted — speed lives in the benchmark's output)."""

import json

from typer.testing import CliRunner

from finemix_core import bench
from finemix_core.cli import app


def test_bench_reports_every_measure(tiny_zoo, monkeypatch):
    home, pt = tiny_zoo
    monkeypatch.setenv("FINEMIX_HOME", str(home))
    res = bench.run(bench.BenchConfig(model="word-cf", pretrained=str(pt), repeats=1, n_live=16))
    for value in (
        res.bare_forward_s,
        res.slider_step_s,
        res.slider_first_s,
        res.mix_only_s,
        res.ours_eval_s,
        res.hf_pipeline_s,
        res.fine_mix_end_to_end_s,
    ):
        assert value > 0
    assert res.slider_over_bare == res.slider_step_s / res.bare_forward_s
    assert (res.live_set.clean, res.live_set.triggered) == (16, 16) and res.live_set.tokens > 0 and res.tokens_per_s > 0
    assert res.zoo_build_s.keys() == {"clean", "word-cf"}
    as_json = json.loads(json.dumps(res.as_dict()))  # --json prints it as one object
    assert as_json["live_set"]["clean"] == 16 and as_json["slider_over_bare"] == res.slider_over_bare
    if bench.bf16_supported(__import__("torch").device("cpu")):
        fast = res.fast_path
        assert fast.speedup_vs_fp32 > 0 and abs(fast.cacc_bf16 - fast.cacc_fp32) <= 0.1


def test_bench_cli_refuses_cuda_without_a_gpu(tiny_zoo, monkeypatch):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: this checks the message shown without one")
    monkeypatch.setenv("FINEMIX_HOME", str(tiny_zoo[0]))
    res = CliRunner().invoke(app, ["bench", "--device", "cuda"])
    assert res.exit_code == 2 and "no CUDA GPU" in res.stderr
