"""Speed comparisons with peers, measured in one run; each writes <name>.md and <name>.json (experiments.harness)."""
