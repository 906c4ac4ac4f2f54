"""Device simulators for developers and tests (gateway-sim)."""
