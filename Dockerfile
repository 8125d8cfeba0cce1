# vecsearch's HTTP service, CPU image (docs/service.md, "Docker").
#   docker build -t vecsearch .
#   docker run --rm -v vecsearch-index:/index -v /srv/photos:/srv/photos:ro vecsearch index /srv/photos --index /index
#   docker run -d -p 127.0.0.1:8000:8000 -v vecsearch-index:/index -v /srv/photos:/srv/photos:ro \
#       -e VECSEARCH_TOKEN_FILE=/run/secrets/token -v "$PWD/token:/run/secrets/token:ro" vecsearch
# Tokens come from the environment (VECSEARCH_TOKEN, VECSEARCH_ADMIN_TOKEN) or from mounted files
# (VECSEARCH_TOKEN_FILE, VECSEARCH_ADMIN_TOKEN_FILE): never baked into the image or put in CMD.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KERAS_HOME=/home/vecsearch/.keras

# A fixed uid, so a volume's owner can be set on the host (chown 10001 DIR).
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin vecsearch \
 && mkdir /index \
 && chown vecsearch:vecsearch /index

WORKDIR /src
COPY pyproject.toml README.md ./
COPY vecsearch ./vecsearch
COPY migrations ./migrations
RUN pip install ".[cpu,server]" \
 && rm -rf /src

USER vecsearch
WORKDIR /home/vecsearch
# The index folder (vectors, SQLite, uploads/): a volume, so it outlives the container.
VOLUME ["/index"]
EXPOSE 8000
# Readiness, not liveness: the container is healthy once the model is loaded and warmed and the index open.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
  CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/api/v1/ready', timeout=4).status != 200)"
ENTRYPOINT ["vecsearch"]
# A non-loopback bind needs a token (from the environment or a file, above). Behind a proxy or
# under a public name, add --allow-host NAME (and --root-path PREFIX for a path prefix).
CMD ["serve", "--index", "/index", "--host", "0.0.0.0", "--port", "8000", "--log-format", "json"]
