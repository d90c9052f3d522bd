"""Server-side coordination of split training on Flower's Grid, one strategy per module."""

from .fedavg import FedAvgStrategy
from .parallel import ParallelStrategy
from .sequential import SequentialStrategy, SplitFedV2Strategy
from .splitfed import SplitFedV1Strategy

STRATEGY_CLASSES = {cls.name: cls for cls in (SequentialStrategy, SplitFedV1Strategy, SplitFedV2Strategy,
                                              ParallelStrategy, FedAvgStrategy)}


def make_strategy(grid, cfg, log=print):
    try:
        cls = STRATEGY_CLASSES[cfg.strategy]
    except KeyError:
        raise ValueError(f"strategy {cfg.strategy!r} is not available; available: {', '.join(STRATEGY_CLASSES)}") from None
    return cls(grid, cfg, log)
