"""Acceptance tier: real processes as a user runs them (`ephemera serve`, workers, the CLI),
killed part-way, started on broken backends, installed the way `make serve` installs."""
