"""infergate registry: models, replicas, domains and aliases, stored in Redis."""
