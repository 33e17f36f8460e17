"""Command line entry point: `spec-exporter [serve]`, `spec-exporter check`, `spec-exporter probe`."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "check":
        from spec_exporter.commands.check import check

        return check(argv[1:])
    if argv and argv[0] == "probe":
        from spec_exporter.commands.probe import probe

        return probe(argv[1:])
    from spec_exporter.commands.serve import serve

    return serve(argv[1:] if argv and argv[0] == "serve" else argv)
