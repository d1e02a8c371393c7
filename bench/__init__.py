"""int_engine.bench: datasets, metrics and runs for ``int-engine bench`` (built on the engine;
the engine never imports it)."""
