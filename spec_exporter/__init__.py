"""spec_exporter: speculative-decoding health for vLLM, exported for Prometheus."""

__version__ = "0.1.0"
