"""Real-data acquisition: COCA (azcopy), SegTHOR (archive), layout verification."""
