"""The public import path of the tap middleware:

    vllm serve MODEL --middleware spec_exporter.middleware.SpecDecodeMiddleware

Deployments, the Helm chart and vLLM command lines name this path, so it stays; the middleware itself is the ASGI
front end of the tap, `spec_exporter.tap.asgi`. Import nothing else here: vLLM loads this module inside its API
server, where only the standard library, prometheus_client and pydantic are sure to be present.
"""

from spec_exporter.tap.asgi import SpecDecodeMiddleware

__all__ = ["SpecDecodeMiddleware"]
