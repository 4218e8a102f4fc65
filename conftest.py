"""Registers the shared test fixtures (PostgreSQL, Kafka) for every package in the workspace."""

pytest_plugins = ["tidemark_devstack.pytest_plugin"]
