# Prometheus from Debian's package, for hosts that cannot pull the upstream image: laid out
# like the upstream one (/bin/prometheus, data in /prometheus, user nobody), so
# deploy/compose.yml runs either. scripts/images.sh copies the binary into build/images/bin/.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
COPY build/images/bin/prometheus /bin/prometheus
RUN mkdir -p /prometheus /etc/prometheus && chown 65534:65534 /prometheus
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
