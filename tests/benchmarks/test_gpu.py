"""`make bench-gpu` degrades cleanly where GPU providers are missing."""

from __future__ import annotations

import pytest

from trustvlm.benchmarks import gpu

pytestmark = pytest.mark.timeout(60)

NO_GPU = gpu.Probe(("CPUExecutionProvider",), None, "no CUDA GPU visible", None, "tensorrt not installed")


def test_bench_gpu_without_any_gpu_says_so_and_exits_0(monkeypatch, capsys, tmp_path):
    # Given a machine whose onnxruntime, torch and tensorrt offer no GPU
    monkeypatch.setattr(gpu, "probe", lambda: NO_GPU)
    # When bench-gpu runs
    code = gpu.main(["--artifacts-root", str(tmp_path / "bench-gpu"), "--repeats", "1"])
    out = capsys.readouterr().out
    # Then it exits 0, names every missing piece, prints the table last, and exported nothing
    assert code == 0
    for missing in ("CUDAExecutionProvider: missing", "TensorrtExecutionProvider: missing", "torch CUDA: missing",
                    "tensorrt: missing", "every GPU provider is missing"):
        assert missing in out, f"{missing!r} not in the output:\n{out}"
    last_lines = out.strip().splitlines()[-len(gpu.PLAN):]
    assert all("missing" in line for line in last_lines), f"the table should come last:\n{out}"
    assert not (tmp_path / "bench-gpu").exists(), "nothing should be exported without a GPU"


def test_bench_gpu_turns_an_unusable_row_into_a_status(monkeypatch, tmp_path):
    # Given a probe that claims the CUDA provider, but every row fails in its own way
    claims_cuda = gpu.Probe(("CUDAExecutionProvider", "CPUExecutionProvider"), None, "no torch CUDA", None, "no trt")
    monkeypatch.setattr(gpu, "probe", lambda: claims_cuda)
    monkeypatch.setattr(gpu, "ensure_fp16_export", lambda root, log: tmp_path)

    def make(backend, precision, artifacts, found, size):
        if backend == "ORT CUDA EP":
            raise RuntimeError("CUDA failure 999")
        return original(backend, precision, artifacts, found, size)

    original = gpu._make
    monkeypatch.setattr(gpu, "_make", make)
    # When the rows run
    _, rows = gpu.run(tmp_path, repeats=1, budget_s=30, log=lambda message: None)
    status = {(row.backend, row.precision): row.status for row in rows}
    # Then a failure is a row, not a crash, and what is absent says why
    assert status[("ORT CUDA EP", "fp32")].startswith("failed: RuntimeError: CUDA failure 999")
    assert status[("torch CUDA", "fp16")] == "missing: no torch CUDA"
    assert status[("ORT TensorRT EP", "fp32")].startswith("missing: onnxruntime has no TensorrtExecutionProvider")


def test_format_rows_prints_a_dash_for_batches_not_measured():
    rows = [gpu.Row("torch CUDA", "fp16", {1: gpu.Figure((100.0, 110.0))}, "partial: time budget")]
    table = gpu.format_rows(rows, batches=(1, 8))
    assert table.splitlines()[-1].split() == ["torch", "CUDA", "fp16", "105", "(100-110)", "-", "partial:", "time",
                                              "budget"]


def test_the_engine_row_runs_the_manifests_engine_not_the_newest_file(tmp_path):
    import json

    (tmp_path / "engines").mkdir()
    for name in ("image_encoder_a_fp16.engine", "image_encoder_z_fp16.engine"):
        (tmp_path / "engines" / name).write_bytes(b"x")
    manifest = {"schema_version": "1.0",
                "engines": {"image_encoder": {"file": "engines/image_encoder_a_fp16.engine", "precision": "fp16"}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert gpu.manifest_engine(tmp_path, "fp16") == tmp_path / "engines" / "image_encoder_a_fp16.engine"
    with pytest.raises(gpu.Unavailable, match="the manifest lists no fp32 image engine \\(it lists: fp16\\)"):
        gpu.manifest_engine(tmp_path, "fp32")


def test_the_tensorrt_provider_row_uses_the_services_cache_and_profile(tmp_path):
    model = tmp_path / "image_encoder.onnx"
    model.write_bytes(b"graph bytes")
    options = gpu._trt_options(model, tmp_path / "cache", 224, fp16=True)
    assert options["trt_engine_cache_enable"] and options["trt_fp16_enable"] is True
    assert options["trt_engine_cache_path"].startswith(str(tmp_path / "cache" / "image_encoder-"))
    assert (options["trt_profile_min_shapes"], options["trt_profile_opt_shapes"], options["trt_profile_max_shapes"]) \
        == ("pixels:1x224x224x3", "pixels:8x224x224x3", "pixels:32x224x224x3")
