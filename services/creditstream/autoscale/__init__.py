"""Local autoscaling: the KEDA + HPA rule, queue-depth readers and a consumer supervisor."""
