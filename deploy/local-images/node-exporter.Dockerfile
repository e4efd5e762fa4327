# The Prometheus node exporter from Debian's package, for hosts that cannot pull the upstream
# image; same entry point as upstream (/bin/node_exporter). scripts/images.sh copies the binary.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
COPY build/images/bin/node_exporter /bin/node_exporter
USER 65534:65534
EXPOSE 9100
ENTRYPOINT ["/bin/node_exporter"]
