# HAProxy from Debian's package, for hosts that cannot pull the upstream image. Same config
# path as upstream (/usr/local/etc/haproxy/haproxy.cfg); deploy/compose.yml gives the command.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >/dev/null \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* \
 && mkdir -p /usr/local/etc/haproxy
USER haproxy
EXPOSE 8080
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
