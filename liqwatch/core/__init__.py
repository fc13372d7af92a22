"""The event-time core, shared by the live worker and the replay: layout (indexes of assets, instruments and
venue books, kernel rule arrays), ingest (the door every record passes), market and account state, the engine
that prices and evaluates them, and the monitor that evaluates one shard."""
