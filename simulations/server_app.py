"""The Flower ServerApp: reads the run config, runs the chosen strategy on the Grid, writes
the results and prints the summary table."""

from __future__ import annotations

import os
import time

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from sltestbed.experiment import ExperimentConfig
from strategies import make_strategy

from .results import summary_table, write_results

app = ServerApp()

def output_directory(cfg: ExperimentConfig) -> str:
    """<output-dir>/<run-name>; a relative output-dir resolves against the directory `flwr run`
    was typed in when Flower passes it on (SLTESTBED_WORKDIR), else the app's working directory."""
    base = cfg.output_dir
    if not os.path.isabs(base):
        base = os.path.join(os.environ.get("SLTESTBED_WORKDIR", os.getcwd()), base)
    return os.path.join(base, cfg.name)


def log(message: str) -> None:
    print(f"[sltestbed] {message}", flush=True)


@app.main()
def main(grid: Grid, context: Context) -> None:
    started = time.perf_counter()
    cfg = ExperimentConfig.from_run_config(dict(context.run_config))  # a bad value stops the run here
    log(f"run {cfg.name}: {cfg.strategy}, {cfg.quantizer} {cfg.bits_label} bits, {cfg.num_rounds} rounds")
    strategy = make_strategy(grid, cfg, log)
    strategy.run()
    directory = output_directory(cfg)
    if cfg.save_model:
        model = strategy.trained_model()
        if model is not None:
            model.save_pretrained(os.path.join(directory, "model"))
    summary = write_results(directory, strategy.cfg, strategy, time.perf_counter() - started)
    print(summary_table(summary, directory), flush=True)
