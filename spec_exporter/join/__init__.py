"""The join core both tap front ends share: read a completion request, watch its response, fold per-band metrics.

Imports only the standard library, prometheus_client and pydantic, so the vLLM middleware can load it inside
vLLM's API server.
"""
