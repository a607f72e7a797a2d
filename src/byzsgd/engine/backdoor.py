"""The backdoor tasks of A Little Is Enough, Section 4.2: what the attacker trains for, and
how its success is measured."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from byzsgd.data import Dataset, apply_pattern
from byzsgd.engine.placement import CPU, gather
from byzsgd.seeding import generator_for

#: Images the pattern attacker draws per round ("randomly samples 1000 images").
PATTERN_SAMPLES = 1000
PATTERN_TARGET = 0


@dataclass
class BackdoorTask:
    """The task ``kind`` on ``dataset``; its batches are on ``device`` (the run's)."""

    kind: str
    dataset: Dataset
    seed: int
    device: torch.device = CPU

    def __post_init__(self) -> None:
        if self.kind == "pattern":  # a 5x5 square of pixels: images only
            self.dataset.require_images("backdoor='pattern' (a 5x5 pixel pattern; use "
                                        "backdoor='sample' for other data)")

    def attacker_batch(self, t: int) -> tuple[Tensor, Tensor]:
        """The inputs and attacker-chosen labels of round t.

        ``sample``: the first training image, relabelled (y + 1) mod K (the paper picks one of
        the first 3 images). ``pattern``: 1,000 random training images with the 5x5
        upper-left pattern, all labelled 0.
        """
        ds, device = self.dataset, self.device
        if self.kind == "sample":
            return (ds.x_train[:1].to(device),
                    ((ds.y_train[:1] + 1) % ds.num_classes).to(device))
        g = generator_for(self.seed, "backdoor", t)
        idx = torch.randint(len(ds.y_train), (PATTERN_SAMPLES,), generator=g, device=CPU)
        x = apply_pattern(gather(ds.x_train, idx, device),
                          value=ds.pattern_value().to(device))
        return x, torch.full((PATTERN_SAMPLES,), PATTERN_TARGET, dtype=torch.long,
                             device=device)

    def test_batch(self) -> tuple[Tensor, Tensor]:
        """Inputs on which success is measured, with the attacker's targets: the backdoored
        sample itself, or the pattern applied to the test images not already of class 0."""
        ds = self.dataset
        if self.kind == "sample":
            return self.attacker_batch(0)
        keep = (ds.y_test != PATTERN_TARGET).nonzero().flatten()
        x = apply_pattern(gather(ds.x_test, keep, self.device),
                          value=ds.pattern_value().to(self.device))
        return x, torch.full((x.shape[0],), PATTERN_TARGET, dtype=torch.long,
                             device=self.device)
