"""observe: the event catalog, the event log and its sinks."""
