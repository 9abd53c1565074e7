"""Importers of released checkpoints (TripoSR, OpenLRM v1.1) into the project's LRMModel, one module per source."""
