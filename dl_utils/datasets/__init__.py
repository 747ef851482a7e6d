"""Training data out of annotation stores: which frames train, validate and test, class statistics,
and class remapping (issue 19). Reads stores, never engines (a sink beside ``formats``)."""
