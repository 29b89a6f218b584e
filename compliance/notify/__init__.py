"""Notifications: the outbox the scan writes in its transaction, and its delivery (e-mail,
webhooks). Imports the leaves, rules, models, audit and identity only."""
