"""Shared test set-up. The suite runs on PostgreSQL (`make test` sets DATABASE_URL)."""
