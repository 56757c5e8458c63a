"""Executors schedule the pipeline's steps: in-process (``local``) or on a Ray cluster (``ray``)."""
