"""infergate's benchmarks: a purpose-built async load generator, the stacks
it drives (real redis-server, registry, router under gunicorn+gevent,
workers) and one module per measured scenario. ``python -m bench --help``."""
