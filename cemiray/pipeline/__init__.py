"""Ray Data pipelines: rendering and generating face datasets as exactly-once Parquet shards."""
