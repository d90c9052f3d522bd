"""The process harness around Flower: the launcher, sweeps, SuperLink and deployment processes, the codec fuzzer."""
