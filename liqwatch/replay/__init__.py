"""The post-mortem: replay of recorded topics or files through the same core as the live worker, batch health
and cascade, and the report."""
