"""``study-seq``: a 2-D slice encoder, then a bidirectional RNN over every slice of a series.

The RSNA 2019 winners' "wider context": each slice is embedded by a 2-D model
(any registered slice-level model, built headless), the embeddings of the whole
series run through a BiGRU (or BiLSTM) with a padding mask, and the RNN outputs
give per-slice logits ``[B, S, n]`` and, pooled over the real slices (masked max
or attention), a series logit ``[B, n]``.

Two ways to train it:

- end to end: ``forward_series(x, mask)``; gradients reach the encoder;
- two-stage, as the winners did: ``encode_slices(x, mask)`` once with a trained
  2-D model (``encoder_checkpoint=DIR`` loads one), store the embeddings, then
  train the RNN on ``forward_embeddings(emb, mask)``.

A mask is ``[B, S]`` bool, True on real slices; real slices come first (the
padding that ``collate_series`` adds sits at the end of each row).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from headct.data.datasets import flatten_channels, neighbour_index
from headct.models.registry import ModelSpec, build_model, register_model

RNNS = {"gru": nn.GRU, "lstm": nn.LSTM}
POOLINGS = ("max", "attention")


@register_model("study-seq", reads="whole series")
def study_seq(
    num_classes: int,
    *,
    encoder: str = "effnet-2d",
    encoder_kwargs: dict[str, Any] | None = None,
    encoder_state: dict[str, torch.Tensor] | None = None,
    pretrained: bool | str = False,
    rnn: str = "gru",
    hidden: int = 256,
    layers: int = 2,
    rnn_dropout: float = 0.0,
    pooling: str = "max",
) -> nn.Module:
    """2-D encoder per slice → bidirectional RNN over the series → slice and series logits.

    ``encoder_state`` (the weights of a trained slice-level model of the same
    ``encoder`` and ``encoder_kwargs``; ``headct.checkpoint.encoder_arguments``
    reads them from a checkpoint) starts the encoder from those weights; it is
    not recorded, so the saved study model rebuilds without them.
    """
    kwargs = dict(encoder_kwargs or {})
    pretrained = kwargs.pop("pretrained", pretrained)  # where weights come from: not recorded
    if encoder_state is not None:
        slice_encoder = build_model(encoder, num_classes=0, **kwargs)
        state = {k: v for k, v in encoder_state.items() if not k.startswith("head.")}
        slice_encoder.load_state_dict(state, strict=True)
        extra = {"encoder": encoder, "encoder_kwargs": kwargs}
    else:
        slice_encoder = build_model(encoder, num_classes=0, pretrained=pretrained, **kwargs)
        extra = {"encoder_kwargs": kwargs or None}
    model = StudySequence(slice_encoder, num_classes, rnn=rnn, hidden=hidden, layers=layers, rnn_dropout=rnn_dropout, pooling=pooling)
    model.spec.kwargs = extra
    return model


class StudySequence(nn.Module):
    """Headless slice encoder → BiRNN over slices → per-slice and series logits."""

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        *,
        rnn: str = "gru",
        hidden: int = 256,
        layers: int = 2,
        rnn_dropout: float = 0.0,
        pooling: str = "max",
    ) -> None:
        super().__init__()
        if rnn not in RNNS:
            raise ValueError(f"rnn must be one of {tuple(RNNS)}, got {rnn!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if encoder.spec.level != "slice":
            raise ValueError(f"study-seq needs a slice-level encoder, got {encoder.spec.name!r}")
        self.encoder = encoder
        self.context = encoder.spec.context
        self.rnn = RNNS[rnn](
            encoder.num_features, hidden, num_layers=layers, batch_first=True, bidirectional=True,
            dropout=rnn_dropout if layers > 1 else 0.0,
        )
        self.pooling = pooling
        width = 2 * hidden
        self.attention = nn.Linear(width, 1) if pooling == "attention" else None
        self.slice_head = nn.Linear(width, num_classes)
        self.series_head = nn.Linear(width, num_classes)
        inner = encoder.spec
        self.spec = ModelSpec(
            input_kind=inner.input_kind, image_channels=inner.image_channels, windows=inner.windows, context=0,
            level="series", mean=inner.mean, std=inner.std, target_layers=[f"encoder.{name}" for name in inner.target_layers],
            target_layout=inner.target_layout, target_grid=inner.target_grid,
            target_method=inner.target_method, target_head_mask=inner.target_head_mask,
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-slice logits ``[B, S, n]`` for raw series ``x [B, S, H, W]``."""
        return self.forward_series(x, mask)[0]

    def forward_series(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(slice_logits [B, S, n], series_logits [B, n])``; padded slices are never encoded."""
        return self.forward_embeddings(self.encode_slices(x, mask), mask)

    def forward_whole_series(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward_series`` for whole series (no padding mask), in the form ``torch.export`` traces.

        ``forward_series`` checks its mask and picks packed or plain RNN input from
        the data, which cannot be traced with a dynamic slice count (and TorchScript
        tracing bakes in the example's count). Without a mask it is this: encode
        every slice with its neighbours, plain RNN, heads, pool over all slices.
        The model's exportable form (``headct.export`` exports it as is).
        """
        outputs, _ = self.rnn(self._encode_whole(x))
        return self.slice_head(outputs), self.series_head(self._pool_all(outputs))

    def encode_slices(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Slice embeddings ``[B, S, d]`` (zeros at padded slices, which are never encoded)."""
        if x.dim() != 4 + (self.spec.image_channels > 1):
            raise ValueError(f"study-seq expects raw series [B, S, H, W] ([B, S, C, H, W] for C 8-bit images "
                             f"per slice), got shape {tuple(x.shape)}")
        if mask is None:  # no data-dependent indexing: traceable for ONNX and shape-only (meta) runs
            return self._encode_whole(x)
        batch, slices = x.shape[:2]
        mask = _check_mask(mask, batch, slices, x.device)
        stacks = _neighbour_stacks(x, mask.sum(1), self.context)
        features = self.encoder.encode(flatten_channels(stacks[mask]))  # only the real slices: [N, d]
        embeddings = features.new_zeros(batch, slices, features.shape[-1])
        embeddings[mask] = features
        return embeddings

    def forward_embeddings(
        self, embeddings: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RNN and heads on slice embeddings ``[B, S, d]``: ``(slice_logits, series_logits)``."""
        if mask is None:
            outputs, _ = self.rnn(embeddings)
            return self.slice_head(outputs), self.series_head(self._pool_all(outputs))
        # packed, so the backward direction starts at each series' own last slice
        batch, slices = embeddings.shape[:2]
        mask = _check_mask(mask, batch, slices, embeddings.device)
        packed = pack_padded_sequence(embeddings, mask.sum(1).cpu(), batch_first=True, enforce_sorted=False)
        outputs, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=slices)
        return self.slice_head(outputs), self.series_head(self._pool(outputs, mask))

    def _encode_whole(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[B, S, d]`` of every slice of whole series, each with its neighbours."""
        batch, slices = x.shape[0], x.shape[1]
        stacks = x[:, neighbour_index(slices, self.context, x.device)]  # [B, S, K, H, W] (or [B, S, K, C, H, W])
        return self.encoder.encode(flatten_channels(stacks.flatten(0, 1))).reshape(batch, slices, -1)

    def _pool_all(self, outputs: torch.Tensor) -> torch.Tensor:
        """The series vector from RNN outputs ``[B, S, w]`` over all slices (no padding)."""
        if self.attention is None:
            return outputs.amax(dim=1)
        return (torch.softmax(self.attention(outputs), dim=1) * outputs).sum(dim=1)

    def _pool(self, outputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask.unsqueeze(-1)
        if self.attention is None:
            return outputs.masked_fill(~keep, float("-inf")).amax(dim=1)
        scores = self.attention(outputs).masked_fill(~keep, float("-inf"))
        return (torch.softmax(scores, dim=1) * outputs).sum(dim=1)


def _check_mask(mask: torch.Tensor | None, batch: int, slices: int, device: torch.device) -> torch.Tensor:
    if mask is None:
        return torch.ones(batch, slices, dtype=torch.bool, device=device)
    mask = mask.to(device=device, dtype=torch.bool)
    if mask.shape != (batch, slices):
        raise ValueError(f"mask must be [B, S] = [{batch}, {slices}], got {tuple(mask.shape)}")
    lengths = mask.sum(1)
    if bool((lengths == 0).any()):
        raise ValueError("every series in the batch needs at least one real slice")
    prefix = torch.arange(slices, device=device)[None, :] < lengths[:, None]
    if not torch.equal(prefix, mask):
        raise ValueError("mask must mark real slices first and padding last in each row")
    return mask


def _neighbour_stacks(x: torch.Tensor, lengths: torch.Tensor, context: int) -> torch.Tensor:
    """``[B, S, 2*context+1, H, W]``: each slice with its neighbours, clamped to the real slices."""
    if context == 0:
        return x.unsqueeze(2)
    index = neighbour_index(x.shape[1], context, x.device)  # [S, K]
    index = torch.minimum(index[None], (lengths - 1)[:, None, None])  # [B, S, K]: within each series
    rows = torch.arange(x.shape[0], device=x.device)[:, None, None]
    return x[rows, index]
