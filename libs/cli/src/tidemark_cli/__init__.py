"""tidemark: the operator CLI."""
