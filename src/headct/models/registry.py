"""The model registry: one name → one builder, and the spec every model carries.

Each architecture lives in its own file and registers its builders with
``@register_model(name)``; ``build_model(name, num_classes, **kw)`` is the one
factory the trainer, the checkpoint loader and the benchmarks call. The
``ModelSpec`` a built model carries (``model.spec``) records everything needed
to rebuild it and to feed it: name, full keyword arguments, input kind, windows,
slice context, level, normalisation and Grad-CAM target layers.
"""

from __future__ import annotations

import difflib
import inspect
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from headct.errors import ConfigError

if TYPE_CHECKING:  # annotations only: the registry itself needs no torch
    from torch import nn

# Arguments that say where initial weights come from, not what the model is:
# they are not recorded in the spec, so a checkpoint rebuilds without them.
TRANSIENT_KWARGS = frozenset({"pretrained", "encoder_state"})

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_READS: dict[str, str] = {}  # what a model reads, when not one slice ± its ``context`` argument


@dataclass
class ModelSpec:
    """What a model is and what it expects as input (JSON-serialisable)."""

    name: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 0
    input_kind: str = "hu"  # "hu" (Hounsfield units) | "uint8" (0..255 grey)
    image_channels: int = 1  # uint8: 8-bit images per slice (e.g. brain, bone); x holds slices*image_channels planes
    windows: list[Any] | None = None  # window names or [center, width]; None for uint8
    context: int = 0  # neighbours on each side: the model reads 2*context+1 slices
    level: str = "slice"  # "slice" | "series"
    mean: list[float] = field(default_factory=list)  # per window channel
    std: list[float] = field(default_factory=list)
    target_layers: list[str] = field(default_factory=list)  # Grad-CAM defaults
    target_layout: str = "nchw"  # "nhwc" for Swin stages (Grad-CAM needs a reshape)
    target_grid: str = "centred"
    """Where cell ``o`` of a stride-``s`` target map looks: "centred", at pixel ``s*(o+1/2)`` (patchify stems
    and 2x2 pooling: ConvNeXt, Swin, VGG); "padded", at ``s*o + 1/2`` (odd kernels with symmetric padding at
    every stride-2 step: EfficientNet, MobileNet, ResNet), half a cell up and left of a plain resize's guess."""
    target_method: str = "gradcam"  # the map method by default (a headct.explain.CAM_METHODS name)
    target_head_mask: bool = False  # zero maps outside the head (air) by default

    @property
    def slices(self) -> int:
        """Slices per input stack (K in ``x [B, K, H, W]``) for slice-level models."""
        return 2 * self.context + 1

    @property
    def planes(self) -> int:
        """Raw planes per input (x's dim 1 for slice-level models): slices times 8-bit images per slice."""
        return self.slices * self.image_channels

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def register_model(name: str, *, reads: str | None = None) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``builder(num_classes, **kw) -> nn.Module`` under ``name``.

    ``reads`` says what one input is when it is not a slice ± the ``context`` argument ("whole series").
    """

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = builder
        if reads:
            _READS[name] = reads
        return builder

    return decorate


@contextmanager
def registered_model(name: str, builder: Callable[..., nn.Module]) -> Iterator[None]:
    """Register ``builder`` under ``name`` for the duration of a ``with`` block, then remove it.

    For models that should not outlive their use (a test's tiny model, an experiment),
    so the global registry is left as it was found.
    """
    register_model(name)(builder)
    try:
        yield
    finally:
        _BUILDERS.pop(name, None)


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_BUILDERS)


def builder_parameters(name: str) -> frozenset[str]:
    """The keyword arguments the builder of ``name`` takes (e.g. whether it reads ``input_kind`` itself)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return frozenset(inspect.signature(_BUILDERS[name]).parameters) - {"num_classes"}


def check_model_name(name: str) -> None:
    """Raise ConfigError (with a "did you mean" hint) unless ``name`` is registered."""
    if name not in _BUILDERS:
        close = difflib.get_close_matches(name, list_models(), n=1)
        raise ConfigError(f"unknown model {name!r}; registered: {', '.join(list_models())}",
                          hint=(f"did you mean {close[0]}? " if close else "") + "headct models describes each")


def describe_models() -> dict[str, dict[str, str]]:
    """Name → {input, description} of every registered model, from its builder (nothing is built)."""
    table = {}
    for name in list_models():
        builder = _BUILDERS[name]
        params = inspect.signature(builder).parameters
        context = params["context"].default if "context" in params else 0
        doc = (builder.__doc__ or "").strip().splitlines()
        table[name] = {
            "input": _READS.get(name) or (f"slice ± {context}" if context else "one slice"),
            "description": doc[0].replace("``", "") if doc else "",
        }
    return table


def build_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a registered model; ``num_classes=0`` gives the headless encoder (features out).

    ``model.spec.kwargs`` holds every builder argument with its default filled
    in (minus the transient ``pretrained``), so the spec alone rebuilds it.
    """
    check_model_name(name)
    builder = _BUILDERS[name]
    try:
        bound = inspect.signature(builder).bind(num_classes, **kwargs)
    except TypeError as err:
        raise ValueError(f"model {name!r}: {err}") from None
    bound.apply_defaults()
    model = builder(*bound.args, **bound.kwargs)
    recorded = {k: v for k, v in bound.arguments.items() if k != "num_classes" and k not in TRANSIENT_KWARGS}
    recorded.update(model.spec.kwargs)  # a builder may resolve a transient argument into real ones
    model.spec = replace(model.spec, name=name, kwargs=_json_safe(name, recorded), num_classes=int(num_classes))
    return model


def _json_safe(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(kwargs))
    except TypeError as err:
        raise ValueError(f"model {name!r}: arguments must be JSON values ({err})") from None
