"""The tap: a pass-through proxy in front of vLLM that joins each request's temperature with its acceptance."""
