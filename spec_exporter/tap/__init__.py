"""The tap, the exporter's write side: it meets each completion request's temperature with that request's own
speculative-decoding acceptance, and folds both into the `spec_tap_*` families.

One core and two front ends:
- `settings`: the tap's settings, one definition of their defaults and validation (the exporter's `tap:` config,
  the middleware's SPEC_EXPORTER_TAP_* environment, the proxy);
- `temperature_bands`: temperature → `temperature_band` label;
- `request`, `response`, `sse`: reading a request as vLLM does, its JSON answer, and the usage chunk of a stream;
- `exchange`: one request and its response, as every front end drives it;
- `metrics`: the `spec_tap_*` families;
- front ends: `asgi` (the middleware inside vLLM's API server, the default) and `proxy` (a pass-through HTTP proxy
  in front of a vLLM whose command line cannot change).

Everything here but `proxy` imports only the standard library, prometheus_client, pydantic and this package, so
vLLM can load the middleware inside its API server (tests/unit/test_tap_package.py checks it). Importing this package
imports none of its modules.
"""
