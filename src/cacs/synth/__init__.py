"""Synthetic COCA/SegTHOR cohort written in the real on-disk formats.

The real data need a data-use agreement, so tests and the default pipeline
run on this cohort; the ingest code cannot tell it from the real thing.
"""
