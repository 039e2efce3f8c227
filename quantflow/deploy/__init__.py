"""Deployment tooling: the Docker image (``image``) and the run launcher of the deployment (``launcher``)."""
