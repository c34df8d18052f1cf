"""Comparison reports of finished runs: read run directories, aggregate over seeds, write HTML/PNG
(and optionally a wandb Report)."""
