"""The Flower apps: the ClientApp and ServerApp over the library and the strategies, the protocol in Flower records, the transports over Flower messages, the run directory."""
