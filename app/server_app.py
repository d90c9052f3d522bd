"""The Flower ServerApp: reads the run config, runs the chosen strategy over the Grid, writes
the results and prints the summary table.

    config -> GridTransport(grid) -> prepare_run (splits, base model, discovery, calibration)
           -> (resume = true: the run directory's checkpoint restored)
           -> strategy.run() (a checkpoint after every round) -> RunReport -> results directory
"""

from __future__ import annotations

import time

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from sltestbed.experiment import ExperimentConfig
from sltestbed.threads import SERVER_THREADS_VAR, fit_threads
from strategies import Checkpoints, run_strategy

from .actor_pool import replace_dead_actors
from .grid_transport import GridTransport
from .results import check_run_directory, output_directory, scalar_writer, summary_table, write_results

app = ServerApp()


def log(message: str) -> None:
    print(f"[sltestbed] {message}", flush=True)


@app.main()
def main(grid: Grid, context: Context) -> None:
    started = time.perf_counter()
    cfg = ExperimentConfig.from_run_config(dict(context.run_config))  # a bad value stops the run here
    fit_threads(SERVER_THREADS_VAR)  # the harness's plan: the cores the ClientApp actors leave
    log(f"run {cfg.name}: {cfg.strategy}, {cfg.quantizer} {cfg.bits_label} bits, {cfg.num_rounds} rounds")
    directory = output_directory(cfg)
    if check_run_directory(directory, cfg):  # another config's run there stops this one here
        log(f"{directory} holds a run of this same config: its results will be replaced")
    checkpoints = Checkpoints(directory, log)
    if checkpoints.exists() and not cfg.resume:
        log(f"{checkpoints.path} is a checkpoint of an unfinished run: this run starts afresh and replaces it "
            "(resume = true goes on from it)")
    if type(grid).__name__ == "InMemoryGrid":  # a simulation: this process runs the ClientApps' actor pool
        replace_dead_actors(log)
    scalars = scalar_writer(cfg, directory)
    try:
        report = run_strategy(cfg, GridTransport(grid, cfg), log, scalars, directory)
    finally:
        if scalars is not None:
            scalars.close()
    summary = write_results(directory, report, time.perf_counter() - started)
    checkpoints.remove()  # the results are written: nothing left to resume
    print(summary_table(summary, directory), flush=True)
