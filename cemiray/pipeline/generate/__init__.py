"""Ray Data generation: the shard plan, the sampler actors, the job, the dataset card."""
