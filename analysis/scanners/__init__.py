"""Layer 2: static scans of the repository's source, one module per kind of fact."""
