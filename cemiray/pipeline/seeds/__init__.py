"""Identity seeds: sources, filters and quotas, and the seed table they write."""
