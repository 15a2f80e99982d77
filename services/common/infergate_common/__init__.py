"""Shared library of infergate: the internal worker API, the token stream
protocol, settings, errors and logging used by every service."""
