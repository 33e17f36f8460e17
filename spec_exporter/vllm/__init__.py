"""Everything that knows vLLM's wire format: metric names and the parser."""
