"""int_engine.kernels: fused GPU kernels and their torch fallbacks.

The fused Triton negative-mining kernel (``mine_fused``, the contract of SPEC.md step 6,
matching ``int_engine.mining.mine``) lands with the throughput engine; until then the
scheduler-free pipeline calls ``int_engine.mining.mine`` directly.
"""
