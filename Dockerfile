# Artifact Vault in a container: a slim Python base, a non-root user, the cache as a volume.
#   docker build -t artifactvault .
#   docker run -d -p 8080:8080 -v avcache:/var/cache/artifactvault artifactvault            # embedded default
#   docker run -d -p 8080:8080 -v avcache:/var/cache/artifactvault \
#       -v $PWD/config.yml:/etc/artifactvault/config.yml:ro artifactvault                  # your config
# It listens on 0.0.0.0:8080 and keeps its cache in /var/cache/artifactvault whatever the
# config says (see deploy/docker-entrypoint.sh); docker stop is a graceful stop.
FROM python:3.11-slim

RUN useradd --system --uid 10001 --user-group --home-dir /var/cache/artifactvault --shell /usr/sbin/nologin \
        artifactvault \
    && install -d -o artifactvault -g artifactvault -m 0750 /var/cache/artifactvault \
    && install -d -m 0755 /etc/artifactvault

WORKDIR /src
COPY pyproject.toml README.md ./
COPY artifactvault ./artifactvault
COPY twisted ./twisted
# (twistd's plugin cache is written now, as root: the service user cannot write site-packages)
RUN pip install --no-cache-dir . \
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
    && rm -rf /src
COPY deploy/docker-entrypoint.sh /usr/local/bin/artifactvault-entrypoint

WORKDIR /var/cache/artifactvault
VOLUME /var/cache/artifactvault
USER artifactvault
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/-/health', timeout=4).status != 200)"
ENTRYPOINT ["artifactvault-entrypoint"]
