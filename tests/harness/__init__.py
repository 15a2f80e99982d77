"""Real processes for the integration tests: redis-server, the registry, the
router and workers, each on a free port, each stopped by the test that started it."""
