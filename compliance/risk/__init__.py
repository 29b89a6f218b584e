"""Risk acceptance: exceptions and their four-eyes decisions, matching them to findings, the
register. Imports the leaves, rules, models, audit, identity and notify only."""
