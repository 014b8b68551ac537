"""Series-level training (``study-seq``): the series forward for DDP and the two-stage mode.

End to end, a batch of padded series ``[B, S, H, W]`` goes through
``forward_series``; two-stage, slice embeddings from the frozen, trained 2-D
encoder are computed once (:class:`EmbeddingDataset`) and only the RNN and its
heads train through ``forward_embeddings``. :class:`SeriesForward` puts either
path behind ``forward(x, mask)`` so DistributedDataParallel syncs its gradients.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from headct.data.datasets import collate_series
from headct.distributed import DistInfo


def training_mode(level: str, encoder_checkpoint: str | None) -> str:
    """"slice" (2-D/2.5-D models), "series" (study-seq end to end) or "embeddings" (two-stage)."""
    if level == "slice":
        if encoder_checkpoint:
            raise ValueError("encoder_checkpoint is for series-level models (study-seq)")
        return "slice"
    return "embeddings" if encoder_checkpoint else "series"


class EmbeddingDataset(Dataset):
    """Two-stage series training: slice embeddings from the frozen encoder, computed once.

    Items look like ``SeriesDataset``'s, with ``[S, d]`` embeddings in place of
    ``[S, H, W]`` pixels; :func:`collate_embeddings` pads them as ``collate_series`` pads series.
    """

    def __init__(self, items: list[tuple]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple:
        return self.items[i]

    @classmethod
    @torch.no_grad()
    def from_series(cls, model: nn.Module, series: Dataset, device: torch.device, info: DistInfo) -> EmbeddingDataset:
        model.encoder.requires_grad_(False)
        model.encoder.eval()
        items = []
        for i in tqdm(range(len(series)), desc="embedding slices", unit="series",
                      disable=not info.is_main, leave=False):
            x, *rest = series[i]
            pixels = torch.as_tensor(x, device=device).float()[None]
            items.append((model.encode_slices(pixels, None)[0].cpu(), *rest))
        return cls(items)


def collate_embeddings(batch: list[tuple]) -> tuple[torch.Tensor, ...]:
    """``collate_series`` for ``[S, d]`` embeddings: the same outputs, padded at the end."""
    # Pad through collate_series by viewing each [S, d] as [S, 1, d].
    x, y_slices, y_series, rows, mask = collate_series([(e[:, None, :], *rest) for e, *rest in batch])
    return x[:, :, 0, :], y_slices, y_series, rows, mask


class SeriesForward(nn.Module):
    """``forward(x, mask)`` → ``(slice_logits, series_logits)``, so DDP sees the series path.

    Mode "series" runs the model end to end; "embeddings" runs the RNN and heads only.
    """

    def __init__(self, model: nn.Module, mode: str) -> None:
        super().__init__()
        self.model, self.mode = model, mode

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "embeddings":
            return self.model.forward_embeddings(x, mask)
        return self.model.forward_series(x, mask)
