"""Cluster layer: what kftune sends to Kubernetes: the API client, the lifecycle of a custom resource it creates and
watches (TrainJob, Katib Experiment, InferenceService), pod specs, resource requests and image names."""
