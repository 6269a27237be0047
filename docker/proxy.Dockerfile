# nginx in front of the server replicas: Debian 12's nginx (1.22) on the same base as the server
# image, so no Docker Hub image is needed. The configuration is mounted at
# /etc/nginx/resnet18/nginx.conf (rendered by resnet18_triton.deploy.proxy: every writable path
# is under /tmp, so the root filesystem can be read-only). Built by scripts/build-image.sh.
# libnginx-mod-http-js (njs 0.7.9): the config loads it to hash bearer tokens (SHA-256) and
# compare them with the API-key hashes it is given; the script is mounted beside the config.
# libnginx-mod-http-lua: the per-tenant metrics the config keeps and serves on :8082, and the
# wait for a slot of its key that a request over its key's share gets before a 429.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ARG VERSION
LABEL org.opencontainers.image.title="resnet18-triton proxy" \
      org.opencontainers.image.version="${VERSION}"
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx libnginx-mod-http-js libnginx-mod-http-lua \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log /etc/nginx/sites-enabled/* \
 && groupadd --gid 101 proxy-nginx \
 && useradd --uid 101 --gid 101 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin proxy-nginx
USER 101:101
WORKDIR /tmp
ENTRYPOINT ["nginx", "-e", "stderr", "-c", "/etc/nginx/resnet18/nginx.conf"]
