"""Edge bundles: ``package`` writes a reproducible .mcpkg; ``runtime`` loads one without torch."""
