"""Server-side coordination of split training on Flower's Grid, one strategy per module."""

from .parallel import ParallelStrategy

STRATEGY_CLASSES = {cls.name: cls for cls in (ParallelStrategy,)}


def make_strategy(grid, cfg, log=print):
    try:
        cls = STRATEGY_CLASSES[cfg.strategy]
    except KeyError:
        raise ValueError(f"strategy {cfg.strategy!r} is not available; available: {', '.join(STRATEGY_CLASSES)}") from None
    return cls(grid, cfg, log)
