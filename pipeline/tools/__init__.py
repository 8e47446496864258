"""Tools built on the stages: debug (per layer), zoo (batches), bench (speed, cost)."""
