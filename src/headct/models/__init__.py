"""The model zoo: every model by name through one factory.

``build_model(name, num_classes, **kw)`` builds a registered model; each takes
one float tensor ``x [B, K, H, W]`` of raw values (HU, or 0..255 grey), begins
with its input layer and carries ``model.spec`` (a ``ModelSpec``). Importing
this package registers the architectures in ``strokenext``, ``efficientnet``,
``sequence`` and ``baselines``.
"""

from headct.models import baselines, efficientnet, sequence, strokenext  # noqa: F401  (registration)
from headct.models.registry import (
    ModelSpec,
    build_model,
    builder_parameters,
    list_models,
    register_model,
)

__all__ = ["ModelSpec", "build_model", "builder_parameters", "list_models", "register_model"]
