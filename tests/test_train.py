"""Training: config precedence, augmentations, schedule, loss going down, exact resume, DDP."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from headct.cli import build_parser
from headct.training.augment import AIR_HU, AugmentConfig, augment_batch
from headct.training.config import TrainConfig, resolve_config, save_config
from headct.training.state import epoch_seed, load_train_state, save_train_state, seed_epoch

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
