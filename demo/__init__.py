"""The real-vLLM demo and the launcher it shares with the real test tier."""
