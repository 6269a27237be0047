# The exported model repository as a versioned image, on the same Debian base as the server
# image. Kubernetes copies it into each pod with an init container (its default command), or into
# a volume with a Job (deploy/kubernetes/kserve/). Built by scripts/build-image.sh --repository
# DIR, with the repository itself as the build context.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ARG VERSION
LABEL org.opencontainers.image.title="resnet18-triton model repository" \
      org.opencontainers.image.version="${VERSION}"
COPY . /model_repository
USER 1000:1000
CMD ["cp", "-R", "/model_repository/.", "/models/"]
