"""Tidemark backup_runner."""
