"""`creditstream bench`: throughput and latency vs the broker ceiling and a seed-style consumer.

Layout: `plan` (pure: which scenarios, how big), `stats` (pure: rates, percentiles, open-loop
schedule), `report` (pure: targets, ratios, sanity checks, Markdown), `isolation` (per-scenario
queues and schemas), `ceiling` and `seed_style` (the two reference consumers, run as their own
processes), `latency` (request/reply at fixed offered rates), `machine` (hardware and versions),
`runner` (the driver).
"""
