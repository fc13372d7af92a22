"""The live worker: the Faust app (wiring only), the supervised services it runs, and the cascade exchange
between the leader and the shards."""
