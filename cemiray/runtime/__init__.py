"""Ray at the edge: starting or joining a cluster, job configs, machine facts."""
