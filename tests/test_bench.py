"""headct bench and the fast inference path, on the CPU with a tiny model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from headct import bench
from headct.bench import (
    BenchConfig,
    forward_gflops,
    run_bench,
    summary_line,
    time_steps,
    write_json,
)
from headct.inference import InferenceModel, prepare_for_inference, resolve_amp, series_logits
from headct.models import ModelSpec
from headct.models.inputs import InputLayer


class TinyNet(nn.Module):
    """HU windowing → conv → BN → pool → linear: small, but has the parts that layout and AMP touch."""

    def __init__(self, num_classes: int = 3, context: int = 0) -> None:
        super().__init__()
        self.spec = ModelSpec(name="tiny", context=context, level="slice", input_kind="hu")
        self.input = InputLayer("hu", slices=2 * context + 1)
        self.conv = nn.Conv2d(self.input.out_channels, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.bn(self.conv(self.input(x))))
        return self.head(features.mean(dim=(2, 3)))


def _tiny(**kw) -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet(**kw)
    with torch.no_grad():  # non-trivial BN statistics, so eval mode differs from train mode
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _hu(batch: int, slices: int = 1, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(-1000, 1500, (batch, slices, size, size), generator=g).float()


SMALL = dict(batch_size=4, img_size=16, warmup=1, iters=3, device="cpu")

RESULT_FIELDS = {
    "model", "mode", "settings", "environment", "input", "params", "gflops_per_sample",
    "ms_per_batch", "ms_per_batch_mean", "samples_per_s", "slice_images_per_s",
    "peak_memory_bytes", "peak_memory_kind", "effective",
}


def _fake_clock(monkeypatch, batch_ms: list[float]) -> None:
    """Every ``time_steps`` call measures ``batch_ms`` (a fake clock), and the peak RSS is 300 MiB."""
    def timed(step, device, warmup, iters):
        step()  # the step still runs (once), so its side effects are real
        return list(batch_ms)

    monkeypatch.setattr(bench, "time_steps", timed)
    usage = SimpleNamespace(ru_maxrss=300 * 1024)  # KiB on Linux
    monkeypatch.setattr(bench.resource, "getrusage", lambda who: usage)
    monkeypatch.setattr(bench.platform, "system", lambda: "Linux")


def test_inference_bench_reports_every_figure(tmp_path, monkeypatch) -> None:
    model = _tiny()
    _fake_clock(monkeypatch, [10.0, 40.0, 20.0])
    result = run_bench(BenchConfig(**SMALL), model=model)
    assert RESULT_FIELDS | {"latency_ms"} <= set(result)
    assert result["mode"] == "inference" and result["model"] == "tiny"
    assert result["ms_per_batch"] == 20.0 and result["ms_per_batch_mean"] == pytest.approx(70 / 3)
    assert result["ms_per_batch_min"] == 10.0 and result["latency_ms"] == 20.0
    assert result["samples_per_s"] == pytest.approx(4 * 1e3 / 20.0)  # batch 4 in the median 20 ms: 200/s
    assert result["samples_per_s_mean"] == pytest.approx(4 * 1e3 / (70 / 3))
    assert result["params"] == sum(p.numel() for p in model.parameters())
    assert result["peak_memory_kind"] == "cpu_peak_rss" and result["peak_memory_bytes"] == 300 * 2**20
    assert result["settings"]["amp"] == "fp32" and result["settings"]["batch_size"] == 4
    env = result["environment"]
    assert env["device"] == "cpu" and env["torch"] == torch.__version__ and env["timm"] and env["device_name"]

    path = tmp_path / "out" / "bench.json"
    write_json(result, path)
    assert json.loads(path.read_text()) == json.loads(json.dumps(result))
    assert "tiny inference" in summary_line(result)


def test_gflops_are_the_conv_and_linear_multiply_adds() -> None:
    model = _tiny()
    gflops = forward_gflops(model, BenchConfig(img_size=16))
    conv = 2 * 3 * 8 * 9 * 16 * 16  # in 3 window channels, out 8, 3x3 kernel, 16x16 outputs
    linear = 2 * 8 * 3
    assert gflops * 1e9 == pytest.approx(conv + linear)


def test_slice_images_count_every_slice_read(monkeypatch) -> None:
    _fake_clock(monkeypatch, [8.0, 8.0, 8.0])
    result = run_bench(BenchConfig(**SMALL, latency=False), model=_tiny(context=1))
    assert result["slices_per_sample"] == 3 and result["samples_per_s"] == pytest.approx(500.0)
    assert result["slice_images_per_s"] == pytest.approx(1500.0)  # 3 slices of each of 500 samples/s
    assert "latency_ms" not in result


def test_train_mode_takes_optimizer_steps() -> None:
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_bench(BenchConfig(**SMALL, train=True), model=model)
    assert result["mode"] == "train" and result["samples_per_s"] > 0
    assert RESULT_FIELDS <= set(result)
    assert not torch.equal(before["conv.weight"], model.conv.weight.detach())
    assert not torch.equal(before["bn.running_mean"], model.bn.running_mean)  # ran in train mode


def test_time_steps_excludes_warmup_and_times_each_iteration(monkeypatch) -> None:
    ticks = iter([1.0, 1.010, 2.0, 2.025, 3.0, 3.005])  # seconds: start/end of each timed call
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(ticks))
    calls = []
    times = time_steps(lambda: calls.append(1), torch.device("cpu"), warmup=2, iters=3)
    assert len(calls) == 5 and times == pytest.approx([10.0, 25.0, 5.0])  # the warm-up calls are not timed
    with pytest.raises(ValueError):
        time_steps(lambda: None, torch.device("cpu"), warmup=0, iters=0)


def test_bad_amp_is_refused() -> None:
    with pytest.raises(ValueError, match="amp"):
        run_bench(BenchConfig(**SMALL, amp="int8"), model=_tiny())


def _tiny_cache(path, *, series: int = 3, slices: int = 4, size: int = 16):
    """A prepared cache written with the cache module: RSNA labels, every series in train."""
    from headct.data.cache import FORMAT_VERSION, write_index, write_meta, write_shard
    from headct.tasks import RSNA_LABELS

    rng = np.random.default_rng(0)
    columns = {name: [] for name in ("row", "study", "patient", "series", "slice_index", "uid", "shard",
                                     "offset", "split", "fold", *RSNA_LABELS)}
    for s in range(series):
        key = f"s{s}"
        write_shard(path, key, rng.integers(-1000, 1500, (slices, size, size)).astype(np.int16), None,
                    {"key": key, "slices": slices, "uids": [f"{key}.{i}" for i in range(slices)]})
        for i in range(slices):
            values = dict(row=len(columns["row"]), study=f"st{s}", patient=f"p{s}", series=key, slice_index=i,
                          uid=f"{key}.{i}", shard=key, offset=i, split="train", fold=-1)
            values.update({name: int(rng.integers(0, 2)) for name in RSNA_LABELS})
            for name, value in values.items():
                columns[name].append(value)
    write_index(path, columns, RSNA_LABELS)
    write_meta(path, {"format_version": FORMAT_VERSION, "source_format": "rsna", "kind": "hu", "size": size,
                      "labels": list(RSNA_LABELS), "split": {"how": "patient"}, "summary": {}, "has_masks": False})
    return path


def test_training_from_the_cache_is_compared_with_synthetic(tmp_path) -> None:
    cache = _tiny_cache(tmp_path / "cache")
    model = _tiny(num_classes=6, context=1)
    result = run_bench(BenchConfig(**SMALL, train=True, data=str(cache), workers=0), model=model)
    from_cache = result["from_cache"]
    assert from_cache["samples_per_s_mean"] > 0 and from_cache["workers"] == 0
    assert result["cache_vs_synthetic"] == pytest.approx(
        from_cache["samples_per_s_mean"] / result["samples_per_s_mean"])
    assert "cache/synthetic" in summary_line(result)


def test_cache_batches_are_augmented_training_batches_on_the_device(tmp_path) -> None:
    from headct.bench import cache_batches

    cache = _tiny_cache(tmp_path / "cache", series=2, slices=3)
    spec = ModelSpec(context=1, input_kind="hu")
    batches = cache_batches(cache, spec, "rsna", 4, torch.device("cpu"))
    seen = [next(batches) for _ in range(3)]  # 6 slices, batch 4, full batches: crosses an epoch boundary
    for x, y in seen:
        assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
        assert y.shape == (4, 6) and set(y.unique().tolist()) <= {0.0, 1.0}
    raw = np.load(cache / "shards" / "s0.npy").astype(np.float32)
    assert not any(np.allclose(x[i, 1].numpy(), raw[j]) for x, _ in seen for i in range(4) for j in range(3))
    with pytest.raises(ValueError, match="fewer than a batch"):
        next(cache_batches(cache, spec, "rsna", 64, torch.device("cpu")))


# --- the fast inference path --------------------------------------------------------

def test_fast_path_falls_back_cleanly_on_cpu() -> None:
    model = _tiny()
    x = _hu(5)
    expected = model(x)
    fast = prepare_for_inference(_tiny(), "cpu", compile="max-autotune", cuda_graph_batch=4)
    assert isinstance(fast, InferenceModel)
    assert fast.amp is None and resolve_amp("auto", "cpu") is None  # "auto" is fp32 off CUDA
    assert fast.compile_mode is None and fast.cuda_graph_batch is None
    with torch.inference_mode():
        out = fast(x)
    assert not fast.uses_cuda_graphs
    torch.testing.assert_close(out, expected.detach())
    assert fast.spec.name == "tiny"
    assert set(fast.state_dict()) == {f"model.{k}" for k in model.state_dict()}


def test_channels_last_matches_the_default_layout() -> None:
    x = _hu(6, size=24)
    plain = prepare_for_inference(_tiny(), "cpu", channels_last=False)
    nhwc = prepare_for_inference(_tiny(), "cpu", channels_last=True)
    assert nhwc.model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain.model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(nhwc(x), plain(x), rtol=1e-4, atol=1e-5)


def test_series_logits_takes_the_fast_model() -> None:
    pixels = np.random.default_rng(0).integers(-1000, 1500, size=(7, 16, 16)).astype(np.int16)
    reference = series_logits(_tiny(context=1), pixels, batch_size=3)
    fast = prepare_for_inference(_tiny(context=1), "cpu", channels_last=True, cuda_graph_batch=4)
    out = series_logits(fast, pixels, batch_size=3)
    torch.testing.assert_close(out.slice_logits, reference.slice_logits, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_on_cpu_stays_close() -> None:
    x = _hu(4)
    fast = prepare_for_inference(_tiny(), "cpu", amp="bf16", channels_last=True)
    with torch.inference_mode():
        out = fast(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), _tiny()(x).detach(), rtol=0.05, atol=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_pads_the_last_batch() -> None:  # pragma: no cover - runs where there is a GPU
    x = _hu(7).cuda()
    fast = prepare_for_inference(_tiny(), "cuda", amp=None, cuda_graph_batch=4)
    with torch.inference_mode():
        out = fast(x)
    assert fast.uses_cuda_graphs
    torch.testing.assert_close(out, _tiny().cuda()(x).detach(), rtol=1e-4, atol=1e-4)


def test_headct_bench_command_writes_json(tmp_path, capsys) -> None:
    from headct.cli import build_parser, main

    out = tmp_path / "bench.json"
    code = main(["bench", "--model", "effnet-2d", "--batch-size", "2", "--img-size", "32", "--warmup", "0",
                 "--iters", "1", "--device", "cpu", "--compile", "--channels-last", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["model"] == "effnet-2d" and result["settings"]["img_size"] == 32
    assert result["settings"]["compile"] == "default" and result["effective"]["compile"] is None  # CPU: skipped
    assert result["gflops_per_sample"] > 0 and result["params"] > 1_000_000
    assert str(out) in capsys.readouterr().out
    args = build_parser().parse_args(["bench", "--model", "m", "--compile", "max-autotune", "--amp", "bf16"])
    assert args.compile == "max-autotune" and args.amp == "bf16" and not args.train



def test_series_level_models_pass_through_the_fast_path() -> None:
    from headct.models import build_model

    torch.manual_seed(0)
    model = build_model("study-seq", 2, hidden=16, layers=1).eval()
    pixels = np.random.default_rng(0).integers(-1000, 1500, size=(5, 32, 32)).astype(np.int16)
    reference = series_logits(model, pixels)
    fast = prepare_for_inference(model, "cpu", channels_last=True, cuda_graph_batch=8)
    out = series_logits(fast, pixels)
    assert out.series_logits is not None and out.slice_logits.shape == (5, 2)
    torch.testing.assert_close(out.series_logits, reference.series_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.slice_logits, reference.slice_logits, rtol=1e-4, atol=1e-4)


def test_synthetic_input_has_a_plane_per_8bit_image_of_each_slice() -> None:
    from headct.bench import BenchConfig, synthetic_input
    from headct.models import build_model

    spec = build_model("effnet-2.5d", 2, input_kind="uint8", image_channels=2, context=1).spec
    x = synthetic_input(spec, BenchConfig(img_size=16), 3, torch.device("cpu"))
    assert x.shape == (3, 6, 16, 16)  # 3 slices x (brain, bone)
    assert 0 <= x.min() and x.max() <= 255  # 8-bit grey, not HU
