"""Training: config precedence, augmentations, schedule, loss going down, exact resume, DDP."""

from __future__ import annotations

import hashlib
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from headct.cli import build_parser
from headct.models import build_model
from headct.training.augment import AIR_HU, AugmentConfig, augment_batch
from headct.training.config import TrainConfig, resolve_config, save_config
from headct.training.state import epoch_seed, load_train_state, save_train_state, seed_epoch

TINY = "tiny-test-effnet"  # the tiny_model fixture of tests/conftest.py registers it
pytestmark = pytest.mark.usefixtures("tiny_model")  # registered for this module only (tests/conftest.py)

# --- config ------------------------------------------------------------------------


def _flags(argv: list[str]) -> tuple[str | None, dict]:
    args = build_parser().parse_args(["train", *argv])
    skip = {"command", "verbose", "config", "resume"}
    return args.config, {k: v for k, v in vars(args).items() if k not in skip}


def test_config_precedence_defaults_then_yaml_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"lr": 1e-3, "batch_size": 8, "epochs": 7, "model_kwargs": {"drop_rate": 0.1}}))
    config_path, flags = _flags(["--config", str(cfg), "--lr", "3e-4", "--model-kwargs", '{"context": 1}',
                                 "--augment", "false", "--clip-grad", "none"])
    config = resolve_config(config_path, flags)
    assert config.lr == pytest.approx(3e-4)          # flag beats YAML
    assert config.batch_size == 8 and config.epochs == 7  # YAML beats defaults
    assert config.model_kwargs == {"context": 1}      # flag replaces the YAML dict
    assert config.augment is False and config.clip_grad is None
    assert config.weight_decay == TrainConfig().weight_decay  # untouched default


def test_config_round_trips_through_yaml_and_rejects_bad_values(tmp_path: Path) -> None:
    config = resolve_config(flags={"epochs": "3", "max_steps_per_epoch": "5", "amp": "off"})
    save_config(config, tmp_path / "config.yaml")
    assert resolve_config(tmp_path / "config.yaml") == config
    with pytest.raises(ValueError, match="unknown training option"):
        resolve_config(flags={"learning_rate": "1"})
    with pytest.raises(ValueError, match="epochs must be int"):
        resolve_config(flags={"epochs": "2.5"})
    with pytest.raises(ValueError, match="amp"):
        resolve_config(flags={"amp": "fp8"})


# --- augmentations ----------------------------------------------------------------------

def _off(**kw) -> AugmentConfig:
    base = {"flip_p": 0.0, "rotate_deg": 0.0, "scale": 0.0, "shift": 0.0, "window_shift": 0.0, "window_scale": 0.0}
    return AugmentConfig(**{**base, **kw})


def test_flip_mirrors_every_slice_of_a_sample() -> None:
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    out = augment_batch(x, _off(flip_p=1.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x.flip(-1))


def test_shift_out_of_the_image_fills_with_air_not_water() -> None:
    x = torch.full((1, 1, 16, 16), 40.0)
    cfg = _off(shift=5.0)  # shifts of up to 10 image widths: almost surely all outside
    out = augment_batch(x, cfg, torch.Generator().manual_seed(3))
    assert out.min() >= AIR_HU - 1e-3 and out.max() <= 40.0 + 1e-3
    assert torch.isclose(out, torch.tensor(AIR_HU)).float().mean() > 0.5


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), shift=st.floats(0, 50), gain=st.floats(0, 0.5))
def test_window_jitter_is_an_affine_map_of_hu_per_sample(seed: int, shift: float, gain: float) -> None:
    x = torch.tensor([[[[-1000.0, 0.0], [40.0, 80.0]]]]).repeat(2, 3, 1, 1)
    out = augment_batch(x, _off(window_shift=shift, window_scale=gain), torch.Generator().manual_seed(seed))
    for b in range(2):
        # y = (x - 40) * g + 40 + o: the brain-window centre moves by o only; slope within 1 ± gain.
        slope = (out[b, 0, 1, 1] - out[b, 0, 1, 0]) / 40.0
        assert abs(float(slope) - 1.0) <= gain + 1e-5
        assert abs(float(out[b, 0, 1, 0]) - 40.0) <= shift + 1e-3
        torch.testing.assert_close(out[b, 0], out[b, 2])  # the same transform for every slice


def test_grey_inputs_stay_in_range_and_augmentation_is_reproducible() -> None:
    x = torch.rand(4, 1, 32, 32) * 255
    cfg = AugmentConfig(window_shift=40.0, window_scale=0.3)
    a = augment_batch(x, cfg, torch.Generator().manual_seed(7), input_kind="uint8")
    b = augment_batch(x, cfg, torch.Generator().manual_seed(7), input_kind="uint8")
    torch.testing.assert_close(a, b)
    assert a.min() >= 0 and a.max() <= 255
    assert not torch.allclose(a, x)


# --- schedule, seeds, state -----------------------------------------------------------------

def test_warmup_then_cosine_to_the_floor() -> None:
    from headct.train import warmup_cosine

    f = warmup_cosine(total_steps=10, warmup_steps=2, min_ratio=0.1)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(10) == pytest.approx(0.1) and f(50) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(2, 12))


def test_epoch_seeds_depend_only_on_seed_epoch_rank() -> None:
    assert epoch_seed(0, 3) == epoch_seed(0, 3)
    assert len({epoch_seed(0, e, r) for e in range(5) for r in range(3)}) == 15
    g1 = seed_epoch(1, 2)
    draw1 = (torch.rand(3), torch.rand(3, generator=g1))
    torch.rand(100)  # history in between must not matter
    g2 = seed_epoch(1, 2)
    draw2 = (torch.rand(3), torch.rand(3, generator=g2))
    torch.testing.assert_close(draw1, draw2)


def test_loader_workers_default_to_none_on_the_cpu_and_some_with_a_gpu(monkeypatch) -> None:
    from headct.data.datasets import loader_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(16)), raising=False)
    assert TrainConfig().workers is None
    assert loader_workers(None, torch.device("cpu")) == 0
    assert loader_workers(None, torch.device("cuda")) == 8  # 15 spare cores, capped at 8
    assert loader_workers(None, torch.device("cuda"), world_size=4) == 3  # 4 cores per rank, one for the rank
    assert loader_workers(2, torch.device("cpu")) == 2  # asked for: as asked


def test_train_state_round_trip_restores_rng(tmp_path: Path) -> None:
    torch.manual_seed(5)
    np.random.seed(5)
    save_train_state(tmp_path, {"epoch": 2, "model": {"w": torch.ones(3)}, "history": [{"epoch": 0, "lr": 0.1}]})
    expected = (torch.rand(2), np.random.rand(2))
    torch.manual_seed(99)
    np.random.seed(99)
    state = load_train_state(tmp_path)  # weights_only=True inside
    assert state["epoch"] == 2 and state["history"][0]["lr"] == 0.1
    torch.testing.assert_close(torch.rand(2), expected[0])
    np.testing.assert_array_equal(np.random.rand(2), expected[1])


# --- training on a tiny cache -------------------------------------------------------------



# The DDP ranks run in their own processes: the launcher registers the same model there and reports,
# per rank, which samples its sampler gave it and a digest of its weights after training.
LAUNCHER = """
import hashlib
import sys

import headct.train
from headct.models.backbones import SliceClassifier
from headct.models.registry import register_model

register_model("{name}")(lambda num_classes, *, input_kind="hu", drop_rate=0.0, pretrained=False: SliceClassifier(
    "test_efficientnet", num_classes, target_layers=["encoder.conv_head"], input_kind=input_kind,
    drop_rate=drop_rate))
fit = headct.train.Trainer.fit


def reporting_fit(self, **kwargs):
    samples = sorted(int(i) for i in self.train_loader.sampler)
    best = fit(self, **kwargs)
    weights = b"".join(t.detach().cpu().numpy().tobytes() for t in self.model.state_dict().values())
    print(f"rank {{self.info.rank}} samples {{samples}} weights {{hashlib.sha256(weights).hexdigest()}}", flush=True)
    return best


headct.train.Trainer.fit = reporting_fit
from headct.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _config(cache: Path, out: Path, **kw) -> TrainConfig:
    base = {"data": str(cache), "model": TINY, "task": "rsna", "out": str(out), "epochs": 2, "batch_size": 8,
            "lr": 3e-3, "warmup_epochs": 0.0, "max_steps_per_epoch": 4, "progress": False, "tensorboard": False,
            "patience": 0, "model_kwargs": {"drop_rate": 0.2}}
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 2-D model trained 4 short epochs; returns its run directory."""
    from headct.train import train

    run = tmp_path_factory.mktemp("trained") / "run"
    train(_config(cache, run, epochs=4, augment=False))
    return run


def test_a_few_steps_lower_the_loss(cache: Path, trained: Path) -> None:
    from headct.checkpoint import read_checkpoint_config

    best = trained / "best"
    rows = list(csv_rows(trained / "metrics.csv"))
    losses = [float(r["train_loss"]) for r in rows]
    assert len(rows) == 4 and losses[-1] < 0.8 * losses[0]
    assert {"epoch", "train_loss", "val_loss", "val_macro_auroc", "lr", "images_per_s"} <= set(rows[0])
    config = read_checkpoint_config(best)
    assert config.labels[-1] == "any" and config.label_kind == "multilabel"
    assert set(config.thresholds) == set(config.labels) and config.temperature > 0
    training = config.training
    assert training["split"]["how"] == "study" and training["slices"]["train"] > 0
    assert str(cache) not in str(training)  # the cache is named by a hash, not its path
    assert (trained / "config.yaml").is_file() and (trained / "last").is_dir()


def test_two_stage_series_model_trains_only_the_rnn_on_frozen_embeddings(cache: Path, trained: Path,
                                                                          tmp_path: Path) -> None:
    from headct.checkpoint import load_checkpoint
    from headct.train import train

    config = _config(cache, tmp_path / "seq", model="study-seq", epochs=1, batch_size=2, lr=1e-2,
                     encoder_checkpoint=str(trained / "best"), model_kwargs={"hidden": 8, "layers": 1})
    best = train(config)
    encoder_2d, _ = load_checkpoint(trained / "best")
    seq, seq_config = load_checkpoint(best)
    assert seq_config.model.level == "series" and seq_config.model.kwargs["encoder"] == TINY
    frozen = {k: v for k, v in encoder_2d.state_dict().items() if not k.startswith("head.")}
    for name, value in frozen.items():  # the encoder is the trained 2-D model's, untouched
        assert torch.equal(seq.encoder.state_dict()[name], value), name
    from headct.checkpoint import encoder_arguments
    from headct.models import build_model

    torch.manual_seed(config.seed)  # what the trainer built before the first step
    initial = build_model("study-seq", 6, **encoder_arguments(trained / "best"), hidden=8, layers=1)
    assert torch.equal(initial.encoder.state_dict()["encoder.conv_stem.weight"],
                       seq.encoder.state_dict()["encoder.conv_stem.weight"])
    assert not torch.equal(initial.rnn.weight_hh_l0, seq.rnn.weight_hh_l0)  # the RNN did train
    assert not torch.equal(initial.series_head.weight, seq.series_head.weight)
    assert load_train_state(tmp_path / "seq")["history"][0]["val_loss"] > 0


def test_resume_after_a_kill_matches_an_uninterrupted_run(cache: Path, tmp_path: Path, monkeypatch) -> None:
    import headct.train as train_module
    from headct.checkpoint import load_checkpoint

    config = _config(cache, tmp_path / "whole", epochs=2, max_steps_per_epoch=3)
    train_module.train(config)

    real_save, calls = train_module.save_train_state, []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:  # killed right after epoch 0 was written
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_train_state", save_then_die)
    cut = _config(cache, tmp_path / "cut", epochs=2, max_steps_per_epoch=3)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(cut)
    monkeypatch.setattr(train_module, "save_train_state", real_save)
    assert load_train_state(tmp_path / "cut")["epoch"] == 0
    torch.manual_seed(1234)  # a different global RNG history must not matter
    train_module.train(cut, resume=True)

    whole, _ = load_checkpoint(tmp_path / "whole" / "last")
    resumed, _ = load_checkpoint(tmp_path / "cut" / "last")
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    timeless = [[{k: v for k, v in row.items() if k != "images_per_s"} for row in csv_rows(run / "metrics.csv")]
                for run in (tmp_path / "whole", tmp_path / "cut")]
    assert len(timeless[0]) == 2 and timeless[0] == timeless[1]


def test_two_gloo_processes_train_with_ddp(cache: Path, tmp_path: Path) -> None:
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER.format(name=TINY))
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(launcher),
           "train", "--data", str(cache), "--model", TINY, "--task", "rsna", "--out", str(run), "--epochs", "1",
           "--batch-size", "4", "--max-steps-per-epoch", "3", "--progress", "false", "--tensorboard", "false",
           "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("best checkpoint:") == 1  # only rank 0 reports
    state = load_train_state(run)
    assert state["history"][0]["images_per_s"] > 0 and state["epoch"] == 0
    assert (run / "best" / "config.json").is_file()
    reports = dict(re.findall(r"rank (\d) (samples .*)", done.stdout))
    assert sorted(reports) == ["0", "1"]
    (samples0, weights0), (samples1, weights1) = (re.match(r"samples (\[.*\]) weights (\w+)", reports[r]).groups()
                                                  for r in ("0", "1"))
    assert samples0 != samples1  # each rank trained on its own shard of the training split ...
    assert weights0 == weights1  # ... and DDP's all-reduce kept their weights identical
    initial = hashlib.sha256(b"".join(t.numpy().tobytes() for t in _tiny_initial_state().values())).hexdigest()
    assert weights0 != initial  # and they did train


def _tiny_initial_state() -> dict[str, torch.Tensor]:
    """The tiny model's weights as the trainer builds them before its first step (seeded, HU cache, 6 labels)."""
    torch.manual_seed(TrainConfig().seed)
    return build_model(TINY, 6, input_kind="hu").state_dict()


def csv_rows(path: Path):
    import csv

    with open(path, newline="") as f:
        yield from csv.DictReader(f)



def test_the_optimizer_step_scales_by_accumulation_and_takes_an_adamw_step() -> None:
    from headct.training.step import OptimizerStep, make_optimizer, task_loss

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = make_optimizer(model, lr=0.1, weight_decay=0.5)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.5, 0.0]  # none on the bias
    step = OptimizerStep(model, optimizer, torch.amp.GradScaler("cpu", enabled=False), clip_grad=1e-3, accum=2)
    x, y = torch.randn(4, 3), torch.tensor([[1.0, 0.0]] * 4)
    weights = torch.tensor([1.0, 3.0])
    loss = task_loss(model(x), y, "multilabel", weights, 0.0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y, reduction="none")
    torch.testing.assert_close(loss, (bce[:, 0] + 3 * bce[:, 1]).mean() / 4)
    before = model.weight.detach().clone()
    expected = torch.autograd.grad(loss / 2, model.weight, retain_graph=True)[0]  # the loss over accum = 2
    step.backward(loss)
    grad = model.weight.grad.clone()
    torch.testing.assert_close(grad, expected)
    step.step()
    assert model.weight.grad is None  # cleared after the step
    # AdamW's first step: decay by lr * wd, then lr against the gradient's sign (clipping keeps the sign)
    torch.testing.assert_close(model.weight.detach(), before * (1 - 0.1 * 0.5) - 0.1 * grad.sign(), atol=1e-4,
                               rtol=0)


def test_pretrained_local_file_initialises_the_backbone_and_stays_out_of_the_checkpoint(
        cache: Path, tiny_model: str, tmp_path: Path) -> None:
    import json

    import safetensors.torch
    import timm

    from headct.checkpoint import load_checkpoint
    from headct.train import train

    torch.manual_seed(99)
    source = timm.create_model("test_efficientnet")
    weights = tmp_path / "secret-site-name" / "weights.safetensors"
    weights.parent.mkdir()
    safetensors.torch.save_file(source.state_dict(), str(weights))
    best = train(_config(cache, tmp_path / "run", model=tiny_model, epochs=1, max_steps_per_epoch=1, lr=1e-9,
                         pretrained=str(weights), model_kwargs={}))
    model, config = load_checkpoint(best)
    torch.testing.assert_close(model.encoder.conv_stem.weight, source.conv_stem.weight, atol=1e-6, rtol=0)
    assert config.training["pretrained"].startswith("file sha256 ")
    assert "secret-site-name" not in json.dumps(config.to_dict())


def test_ema_checkpoint_holds_the_warmed_up_average_of_the_training_weights(cache: Path, tmp_path: Path) -> None:
    from headct.checkpoint import load_checkpoint
    from headct.train import train

    def run(name: str, steps: int) -> tuple[dict, dict]:
        config = _config(cache, tmp_path / name, epochs=1, max_steps_per_epoch=steps, ema_decay=0.9)
        train(config)
        trained = load_train_state(tmp_path / name)["model"]  # the raw training weights
        saved, _ = load_checkpoint(tmp_path / name / "last")
        return trained, saved.state_dict()

    first, first_saved = run("one", 1)   # after one step the average is that step's weights (decay 0)
    second, second_saved = run("two", 2)  # the same first step (same seed, same lr), then a second one
    decay = min(1 - 2 ** (-2 / 3), 0.9)    # ModelEmaV3's warm-up decay at step 2
    for name, value in second.items():
        if value.is_floating_point():
            torch.testing.assert_close(first_saved[name], first[name], msg=name)
            torch.testing.assert_close(second_saved[name], decay * first[name] + (1 - decay) * value,
                                       rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.equal(second_saved["encoder.conv_stem.weight"], second["encoder.conv_stem.weight"])


def test_early_stopping_can_monitor_the_study_level_metric(cache: Path, tmp_path: Path) -> None:
    from headct.checkpoint import read_checkpoint_config
    from headct.train import train

    best = train(_config(cache, tmp_path / "run", epochs=3, monitor="study_macro_auroc"))
    rows = list(csv_rows(tmp_path / "run" / "metrics.csv"))
    scores = [float(r["val_study_macro_auroc"]) for r in rows]
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)
    training = read_checkpoint_config(best).training
    assert training["monitor"] == "study_macro_auroc"
    assert training["best_score"] == pytest.approx(max(scores))
    assert training["best_epoch"] == scores.index(max(scores))


def test_class_balance_weights_rare_labels_by_their_frequency(cache: Path, tmp_path: Path, monkeypatch) -> None:
    from headct.train import balanced_weights, train

    multilabel = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]] * 4)
    np.testing.assert_allclose(balanced_weights(multilabel, "multilabel", 3), [4.0, 1.0, 4.0])
    skewed = np.array([[1, 0]] + [[0, 0]] * 99)
    assert balanced_weights(skewed, "multilabel", 2)[0] == 10.0  # capped
    classes = np.array([0] * 6 + [1] * 2 + [2] * 4)
    np.testing.assert_allclose(balanced_weights(classes, "multiclass", 4), [12 / 24, 12 / 8, 12 / 16, 1.0])

    # the tiny cache's training split: 18 of 72 slices bleed (intraparenchymal, any), the rest never
    import headct.train as train_module

    seen = {}
    real = train_module.balanced_weights
    monkeypatch.setattr(train_module, "balanced_weights", lambda *a, **k: seen.setdefault("w", real(*a, **k)))
    train(_config(cache, tmp_path / "run", epochs=1, max_steps_per_epoch=1, class_balance=True))
    np.testing.assert_allclose(seen["w"], [1, 3, 1, 1, 1, 3])


def test_train_fold_on_a_cache_without_folds_is_one_line(cache: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from headct.cli import main

    assert main(["train", "--data", str(cache), "--model", TINY, "--task", "rsna", "--out", str(tmp_path / "run"),
                 "--fold", "1"]) == 1
    first, *rest = capsys.readouterr().err.splitlines()
    assert re.match(r"^headct train: .*no fold 1; the cache has no folds$", first)
    assert rest == ["  hint: headct prepare --folds K assigns patient folds"]
    assert not (tmp_path / "run").exists()


def test_a_finished_run_resumed_with_tta_flip_is_rescored_as_if_trained_with_it(cache: Path,
                                                                               tmp_path: Path) -> None:
    """tta_flip changes no training step: resuming a finished run with it on refits the calibration on
    mirrored validation predictions and records the flag, as a run trained with it from the start."""
    import shutil

    from headct.checkpoint import load_checkpoint, read_checkpoint_config
    from headct.train import train

    train(_config(cache, tmp_path / "plain", epochs=1, max_steps_per_epoch=2))
    direct = read_checkpoint_config(train(_config(cache, tmp_path / "direct", epochs=1, max_steps_per_epoch=2,
                                                  tta_flip=True)))
    shutil.copytree(tmp_path / "plain", tmp_path / "rescored")
    rescored_best = train(_config(cache, tmp_path / "rescored", epochs=1, max_steps_per_epoch=2, tta_flip=True),
                          resume=True)
    plain, rescored = read_checkpoint_config(tmp_path / "plain" / "best"), read_checkpoint_config(rescored_best)
    assert not plain.tta_flip and rescored.tta_flip and rescored.training["config"]["tta_flip"]
    assert rescored.temperature == pytest.approx(direct.temperature, rel=1e-5)
    assert rescored.thresholds == pytest.approx(direct.thresholds, rel=1e-5)
    assert rescored.training["epochs_run"] == 1
    for a, b in zip(load_checkpoint(rescored_best)[0].state_dict().values(),
                    load_checkpoint(tmp_path / "direct" / "best")[0].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)  # no step was taken again: the weights are those of one training
