"""A tiny task for loop tests: a linear model with dropout on an epoch-indexed noisy dataset."""

from __future__ import annotations

import torch
from torch import nn


class NoisyLine(torch.utils.data.Dataset):
    epoch_indexed = True

    def __init__(self, n: int = 24, *, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=generator)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict:
        i = index % len(self.x)
        noise = torch.randn(4, generator=torch.Generator().manual_seed(index)) * 0.01  # pure function of index
        return {"x": self.x[i] + noise, "y": self.y[i]}


class LineTask:
    def __init__(self):
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 1))
        self.validations = []

    def trainable_modules(self):
        return {"net": self.net}

    def training_step(self, batch, *, step):
        prediction = self.net(batch["x"]).squeeze(-1)
        loss = ((prediction - batch["y"]) ** 2).mean()
        return {"loss": loss, "mse": loss.detach()}

    def validation_step(self, batch):
        prediction = self.net(batch["x"]).squeeze(-1)
        return {"mse": float(((prediction - batch["y"]) ** 2).mean())}

    def on_validation(self, step, out_dir):
        self.validations.append(step)
