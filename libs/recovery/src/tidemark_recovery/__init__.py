"""Point-in-time recovery rules, pure: no I/O, shared by the gateway (coverage endpoint,
restore validation) and the runners (which segments a restore needs)."""
