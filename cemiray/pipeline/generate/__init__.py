"""The generate part of the pipeline: Ray Data generation of synthetic face datasets.

config, inputs, shard_plan, schedules, sampler_actor, streaming, job, dataset_card, exporters."""
