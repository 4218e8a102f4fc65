"""Local Kafka and PostgreSQL for Tidemark development and tests (CLI and pytest fixtures)."""
