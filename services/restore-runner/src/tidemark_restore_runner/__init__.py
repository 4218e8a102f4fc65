"""Tidemark restore_runner."""
