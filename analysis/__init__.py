"""Tables and figures from run directories: `python -m analysis RUNS_DIR --out DIR`.

- `runs`: run directories read back (config, summary, ledger, metrics, calibration)
- `comm_table`: bytes per strategy / quantizer / bits, the reductions, accuracy
- `network`: the time a round spends communicating over modelled links
- `plots`: accuracy vs bits, accuracy vs bytes, the entropy figure
"""
