"""Beyond one server: nginx in front of Triton replicas, locally and in compose/Kubernetes."""
