"""The commands: thin users of the core (config, poller, derivations), one module each."""
