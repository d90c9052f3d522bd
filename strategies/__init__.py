"""Server-side coordination of split training, one strategy per module, Flower-free: a
strategy talks to its clients through a `Transport` (`transport.py`)."""

from .checkpoint import Checkpoints
from .strategy import RunStopped
from .fedavg import FedAvgStrategy
from .local_loss import LocalLossStrategy
from .parallel import ParallelStrategy
from .sequential import SequentialStrategy, SplitFedV2Strategy
from .setup import RunSetup, prepare_run
from .splitfed import SplitFedV1Strategy

STRATEGY_CLASSES = {cls.name: cls for cls in (SequentialStrategy, SplitFedV1Strategy, SplitFedV2Strategy,
                                              ParallelStrategy, LocalLossStrategy, FedAvgStrategy)}


def make_strategy(setup: RunSetup, transport, log=print):
    try:
        cls = STRATEGY_CLASSES[setup.cfg.strategy]
    except KeyError:
        raise ValueError(f"strategy {setup.cfg.strategy!r} is not available; "
                         f"available: {', '.join(STRATEGY_CLASSES)}") from None
    return cls(setup, transport, log)


def run_strategy(cfg, transport, log=print, scalars=None, directory: str | None = None):
    """Set-up, then the strategy's run: the whole server side of one experiment. `scalars`: a
    writer with `add_scalar(tag, value, step)` (TensorBoard's) for per-step and per-round figures.
    `directory`: the run directory, where the checkpoints go (cfg.checkpoint) and a resumed
    run finds its own (cfg.resume); None: no checkpoints."""
    strategy = make_strategy(prepare_run(cfg, transport, log), transport, log)
    strategy.scalars = scalars
    if directory is not None and (cfg.checkpoint or cfg.resume):
        checkpoints = Checkpoints(directory, log)
        if cfg.resume:
            checkpoints.resume(strategy)
        strategy.checkpoints = checkpoints if cfg.checkpoint else None
    return strategy.run()
