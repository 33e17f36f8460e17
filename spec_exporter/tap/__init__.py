"""The proxy tap: the join core (spec_exporter.join) as a pass-through proxy in front of vLLM."""
