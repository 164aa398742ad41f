"""Ray Train + DeepSpeed training loops: the recognition backbone and the CemiFace generator."""
