"""helexa-bench: the fleet's continuous, version-aware benchmark (`helexa-bench`).

A client, never a server of models: it sweeps each target's warm models with
a suite of scenarios (`scenarios`), stamps every result with the target's
build, hardware and health (`target`), keeps results in SQLite (`store`),
skips what a build already has, and reports them as tables, JSON, an HTML
page with charts (`report`, `page`) and a small read API (`api`). A target is
a neuron, a cortex gateway, or any OpenAI-compatible server (a peer), so peers
and this project share one sweep and one chart. Imports no torch.
"""
