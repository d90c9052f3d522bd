"""Tables and figures from run directories: `python -m analysis RUNS_DIR --out DIR`.

- `runs`: run directories read back (config, summary, ledger, metrics, calibration, privacy)
- `stats`: means over seeds with 95% Student t intervals, paired differences to fp32
- `comm_table`: bytes per strategy / quantizer / bits, the reductions, accuracy with its intervals
- `network`: the time a round spends communicating over modelled links
- `plots`: accuracy vs bits, accuracy vs bytes, the entropy figure
- `privacy`: the privacy table, what the attacks recovered per width beside their baselines
- `privacy_plots`: leakage vs bits, the reconstructions per width, accuracy vs leakage
"""
