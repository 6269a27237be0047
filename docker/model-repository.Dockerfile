# The exported model repository as a versioned image. Kubernetes copies it into each pod with an
# init container (deploy/kubernetes/triton-deployment.yaml) or into a PVC with a Job (kserve/).
# Build with the repository itself as the context, after `resnet18-triton export`:
#   docker build -f docker/model-repository.Dockerfile \
#     -t resnet18-triton/model-repository:0.1.0 model_repository
FROM busybox:1.36
COPY . /model_repository
USER 1000
