"""observe: the event and metrics catalogs, the event log and its sinks, the event store,
and the counters the stages bump."""
